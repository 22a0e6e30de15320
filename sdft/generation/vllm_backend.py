"""vLLM generation backend for GPUs (continuous batching, paged attention).

vLLM is imported only when this backend is constructed, so CPU machines never need it. Prompts are
tokenized and left-truncated by the HF backend's ``encode_prompts`` and handed over as token ids, so both
backends see the same input and never add special tokens twice. Sampling seeds are per prompt (the same
``row_seed`` rule as the HF backend): a resumed run draws the same samples for the prompts it redoes.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdft.errors import SdftError
from sdft.generation import Completion, GenerationParams


class VLLMBackend:
    """``generate(prompts, params)`` with ``vllm.LLM``; a LoRA adapter is applied per request."""

    loads_hf_weights = True

    def __init__(self, model: str, adapter: str | None = None, device: str | None = None, dtype=None,
                 progress: bool = True, gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, **engine_options):
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise SdftError(f"the vllm backend needs the vllm package on a CUDA machine "
                            f"(pip install vllm); it could not be imported ({exc}); use --backend hf") from None
        from sdft.models import resolve_model

        if device not in (None, "cuda", "auto"):
            raise SdftError(f"the vllm backend runs on CUDA GPUs only (device '{device}' requested)")
        folder = resolve_model(model)
        options = dict(engine_options)
        self.lora_request = None
        if adapter:
            adapter_path = Path(adapter).expanduser()
            config_file = adapter_path / "adapter_config.json"
            if not config_file.is_file():
                raise SdftError(f"adapter {adapter_path} is not a LoRA adapter folder (no adapter_config.json)")
            rank = int(json.loads(config_file.read_text()).get("r", 16))
            # vLLM sizes its LoRA buffers up front: the rank must fit (it accepts powers of two >= 8).
            options.update(enable_lora=True, max_lora_rank=max(8, 1 << (rank - 1).bit_length()))
            self.lora_request = LoRARequest("sdft-adapter", 1, str(adapter_path.resolve()))
        self.llm = LLM(model=folder, dtype=str(dtype).removeprefix("torch.") if dtype else "auto",
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size, **options)
        self.tokenizer = self.llm.get_tokenizer()
        self.model = None  # no torch module to share: callers needing log-likelihoods load one themselves
        self.progress = progress

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Completion]:
        from vllm import SamplingParams

        from sdft.generation.hf import encode_prompts, row_seeds, warn_truncated

        if not prompts:
            return []
        ids_list, truncated = encode_prompts(self.tokenizer, prompts, params.max_prompt_tokens,
                                             params.truncation_side)
        warn_truncated(truncated, params.max_prompt_tokens, params.truncation_side)
        sampling = [SamplingParams(
            n=1, max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=params.top_k if params.top_k > 0 and not params.greedy else -1,  # -1: no top-k limit
            seed=seed) for seed in row_seeds(list(prompts), params.seed)]
        requests = [{"prompt_token_ids": ids} for ids in ids_list]
        # vLLM schedules the whole list itself (continuous batching): params.batch_size does not apply.
        outputs = self.llm.generate(requests, sampling, use_tqdm=self.progress, lora_request=self.lora_request)
        completions = []
        for ids, cut, output in zip(ids_list, truncated, outputs):
            result = output.outputs[0]
            completions.append(Completion(
                text=result.text, prompt_tokens=len(ids), completion_tokens=len(result.token_ids),
                # vLLM reports "stop" for EOS and stop strings, "length" for the budget, "abort" if cancelled.
                finish_reason="stop" if result.finish_reason == "stop" else "length", prompt_truncated=cut))
        return completions
