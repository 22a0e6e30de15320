"""Generation backends: one small interface, ``generate(prompts, params) -> completions``.

Backends are registered by a lazy ``"module:Class"`` string, so importing sdft never imports vLLM (or
even torch) until a backend is actually loaded. A backend receives fully rendered prompt strings (chat
template already applied) and returns one :class:`Completion` per prompt, in the same order.

What a backend exposes is declared, not probed: ``tokenizer`` (a Hugging Face tokenizer, or None when
prompts cannot be rendered with a chat template) and ``model`` (a torch module that log-likelihood tasks
may borrow, or None: vLLM, endpoints, test doubles). Test doubles are registered by the tests
(:func:`register_backend`), never in :data:`BACKENDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from sdft.base.config import field
from sdft.base.errors import ConfigError
from sdft.base.keys import without_old_defaults
from sdft.base.plugins import import_target
from sdft.base.provenance import recordable
from sdft.generation import auto
from sdft.generation.streaming import SAVE_EVERY_S, runs, saved_as_they_come, stream, streams  # noqa: F401 (the package's API)
from sdft.models import resolve

Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class EngineSettings:
    """Generation engine: the settings every generating stage (distill, eval) takes, declared once.

    A mixin of those stages' configs, so the YAML keys and flags stay flat (``backend:``, ``--backend``);
    :func:`backend_setup` turns them into a backend to load. Endpoints and options are not keyed: they say
    where and how fast, not what is generated (the backend and precision as resolved are recorded and keyed,
    and so is the one option that changes the text: :func:`engine_key`)."""

    section: ClassVar[str] = "generation engine"  # the heading of these flags in --help
    backend: str = field("auto", "generation backend: auto (vllm when installed and it supports the model, "
                         "else hf), hf, vllm, openai (--endpoint), or 'module:Class'")
    precision: Precision = field(
        "auto", "generation precision; auto: bf16 where measured faster (vLLM on a GPU or a bf16-capable CPU)")
    endpoint: list[str] = field(default_factory=list, keyed=False,
                                help="OpenAI-compatible server URL(s) for --backend openai")
    backend_option: list[str] = field(default_factory=list, keyed=False,
                                      help="KEY=VALUE backend option, e.g. max_concurrency=64")

    def check_engine_settings(self) -> None:
        """Called by the stages' ``validate``: a backend option no candidate backend takes is refused when
        the config is built, before any model is resolved, converted or loaded."""
        check_backend_options(self.backend, list(self.endpoint), list(self.backend_option))


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 42
    stop: tuple[str, ...] = ()
    batch_size: int = 8
    max_prompt_tokens: int = 1024
    # Which end of a too-long prompt is cut: "left" keeps the instruction's end and the generation
    # prompt (ours); "right" keeps the start, as the reference code did (paper presets).
    truncation_side: Literal["left", "right"] = "left"
    # (token id, bias) pairs added to those tokens' logits at every step, as OpenAI's logit_bias; -100 bans a
    # token. Set by one pass of a decoding probe (sdft.evaluate.opening), never by a stage's settings.
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        # The one check of decoding values, whichever stage or config builds them.
        for name in ("max_new_tokens", "batch_size", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'{name}' must be at least 1, got {getattr(self, name)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("need temperature >= 0, 0 < top_p <= 1 and top_k >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def record(self) -> dict:
        """The settings as written into run records and cache keys (:mod:`sdft.base.keys`)."""
        from dataclasses import asdict

        return without_old_defaults("decoding", asdict(self))


@dataclass
class DecodingSettings:
    """Decoding: the :class:`GenerationParams` settings every generating stage (distill, eval) takes, declared
    once and mixed in as :class:`EngineSettings` is (flat keys and flags, their own heading in ``--help``). A
    stage that needs another default or help text redeclares the field with ``sdft.base.config.override``
    (distill's budget per rewrite, eval's longer prompts); its key rule stays the group's."""

    section: ClassVar[str] = "decoding"
    max_new_tokens: int | None = field(None, "generation budget per answer (default: each task's own)")
    max_prompt_tokens: int = field(1024, "longer prompts are cut (and reported)")
    truncation_side: Literal["left", "right"] = field(
        "left", "which end of a too-long prompt is cut (right: the reference code's, loses '### Response:')")
    batch_size: int = field(8, "prompts per generation batch")
    temperature: float = field(0.0, "0 = greedy decoding")
    top_p: float = field(1.0, "nucleus sampling threshold (sampling only)")
    top_k: int = field(0, "top-k sampling (0 = off; sampling only)")
    seed: int = field(42, "random seed for sampling")

    def generation_params(self, budget: int = 256, **changes: Any) -> GenerationParams:
        """These settings as :class:`GenerationParams`: ``budget`` is the answer budget when
        ``max_new_tokens`` is None (eval: each task's own); ``changes`` are one call's own values (a task's
        stop strings, greedy decoding)."""
        values = {"max_new_tokens": budget if self.max_new_tokens is None else self.max_new_tokens,
                  "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed,
                  "batch_size": self.batch_size, "max_prompt_tokens": self.max_prompt_tokens,
                  "truncation_side": self.truncation_side}
        return GenerationParams(**{**values, **changes})

    def check_decoding_settings(self) -> None:
        """Called by the stages' ``validate``: decoding values are checked once, by :class:`GenerationParams`."""
        self.generation_params()


@dataclass(frozen=True)
class Engine:
    """The engine settings of a generating step that is not a stage of its own (a local judge, replay's seed
    answers), for :func:`backend_setup`: the one resolver every generating step goes through."""

    model: str
    backend: str = "auto"
    precision: str = "auto"
    endpoint: tuple[str, ...] = ()
    backend_option: tuple[str, ...] = ()


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    prompt_truncated: bool = False


def cut_at_stop(text: str, stop) -> tuple[str, bool]:
    """The text up to the first stop string (and whether one was found): every backend cuts the same way."""
    hits = [text.find(s) for s in stop if s and s in text]
    return (text[:min(hits)], True) if hits else (text, False)


class Backend(Protocol):
    """Constructed as ``Backend(model=..., adapter=..., progress=..., **options)``.

    ``tokenizer``: the tokenizer prompts are rendered with (None: plain prompts only). ``model``: a torch
    module with ``forward`` that log-likelihood scoring may share, or None when the backend has none."""

    tokenizer: Any
    model: Any

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Completion]: ...

    # Optional: ``generate_stream(requests, groups) -> Iterator[(index, Completion)]`` over ``(prompt, params)``
    # pairs, yielding each answer as it finishes, for a backend that keeps requests of different params in flight
    # together (vLLM); ``groups`` labels the requests one generate() call would have held (sampling seeds follow
    # them). :func:`stream` uses it where a backend has it.


BACKENDS: dict[str, str] = {
    "hf": "sdft.generation.hf:HFBackend",
    "vllm": "sdft.generation.vllm_backend:VLLMBackend",
    "openai": "sdft.generation.openai_backend:OpenAIBackend",
}


def register_backend(name: str, target: str) -> None:
    """Register a backend by ``"module:Class"`` (imported only when used)."""
    BACKENDS[name] = target


def backend_class(name: str) -> type:
    """The class of a registered backend (or of any ``module:Class``), imported now."""
    target = BACKENDS.get(name, name if ":" in name else None)
    if target is None:
        raise ConfigError(f"unknown backend '{name}'; known: {', '.join(sorted(BACKENDS))}")
    return import_target(target, "backend")


def loads_hf_weights(name: str) -> bool:
    """Whether a backend loads Hugging Face weights (class attribute ``loads_hf_weights``)."""
    return bool(getattr(backend_class(name), "loads_hf_weights", False))


def model_for_backend(name: str, model: str) -> str:
    """The model as the backend takes it: a local folder for backends that load HF weights (aliases,
    ``.gguf`` files and hub ids resolved and cached), the name as given for others (test doubles,
    remote endpoints)."""
    if loads_hf_weights(name):
        return resolve.resolve_model(model)
    return model


# Set by the stage itself or by a flag of their own: never a --backend-option.
_SUPPLIED = {"model": "--model", "adapter": "--adapter", "progress": "--progress / --no-progress",
             "precision": "--precision", "endpoint": "--endpoint"}


def backend_options(cls: type) -> tuple[dict, Any]:
    """The ``--backend-option`` keys a backend class takes: ``(named, extra)``. ``named``: its constructor's
    parameters, less those the stage or a flag supplies (``{name: inspect.Parameter}``); ``extra``: a
    function giving the further keys it forwards (its ``forwarded_options``: vLLM's engine arguments; None
    from it: not knowable here), or None when it takes a bare ``**options`` without saying which (any key)."""
    import inspect

    params = inspect.signature(cls).parameters
    named = {n: p for n, p in params.items() if n not in _SUPPLIED
             and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    extra = getattr(cls, "forwarded_options", None)
    if extra is None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        extra = frozenset
    return named, extra


def check_backend_options(backend: str, endpoints: list[str], items: list[str]) -> dict:
    """Parse ``--backend-option`` items and refuse, in one line listing the valid ones, a key that the
    backend (``auto``: any backend it may choose) does not take, or a value of the wrong type for it."""
    options = auto.parse_options(items)
    if not options:
        return options
    for key in options:
        if key in _SUPPLIED:
            raise ConfigError(f"--backend-option {key} is not a backend option: use {_SUPPLIED[key]}")
    if backend != "auto":
        names = [backend]
    else:
        names = ["openai"] if endpoints else ["hf", "vllm"] if auto.vllm_installed() else ["hf"]
    cls = backend_class(names[0]) if len(names) == 1 else None
    if hasattr(cls, "check_options"):  # the backend's own refusals first (an API key given as a setting)
        cls.check_options({**options, "endpoint": endpoints or None})
    takes = {name: backend_options(backend_class(name)) for name in names}
    forwarded: dict[str, Any] = {}
    for key, value in options.items():
        for name, (named, extra) in takes.items():
            if key in named:
                _check_option_type(key, named[key], value)
                break
            if extra is None:
                break
            if name not in forwarded:
                forwarded[name] = extra()  # vLLM: its source is read only for a key not among its own
            if forwarded[name] is None or key in forwarded[name]:
                break
        else:
            import difflib

            listed = "; ".join(f"for {name}: {_listing(named, extra)}" for name, (named, extra) in takes.items())
            which = f"backend {backend}" + (f" (it picks {' or '.join(names)})" if backend == "auto" else "")
            known = {n for named, _ in takes.values() for n in named} | {n for f in forwarded.values() for n in f or ()}
            near = difflib.get_close_matches(key, sorted(known), n=1)
            raise ConfigError(f"unknown --backend-option '{key}' for {which}"
                              + (f" (did you mean {near[0]}?)" if near else "") + f"; valid {listed}")
    return options


def _listing(named: dict, extra) -> str:
    keys = ", ".join(sorted(named)) or "none"
    hint = (extra.__doc__ or "").strip() if extra not in (None, frozenset) else ""
    return f"{keys}, or {hint}" if hint else keys


def _check_option_type(key: str, param, value) -> None:
    """The value against the parameter's default (or annotation): numbers must be numbers, flags flags."""
    import inspect
    import math

    default = param.default if param.default is not inspect.Parameter.empty else None
    annotation = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", "")
    kind = type(default) if default is not None else next(
        (t for t in (bool, int, float) if t.__name__ in annotation.replace(" ", "").split("|")), None)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"--backend-option {key} must be true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"--backend-option {key} must be an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise ConfigError(f"--backend-option {key} must be a finite number, got {value!r}")


def load_backend(name: str, model: str, adapter: str | None = None, **options) -> Backend:
    """Instantiate a registered backend (or any ``module:Class``) for a model."""
    try:
        return backend_class(name)(model=model, adapter=adapter, **options)
    except TypeError as exc:  # an option the backend does not take: the user's --backend-option
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ConfigError(f"backend '{name}': {exc}") from None


def release_engines() -> None:
    """Stop a generation engine kept warm for the next generating stage. vLLM's worker processes hold the
    model and a KV cache (4-5 GB for a 0.5B model on a CPU) and keep polling a core, which a training or
    scoring stage of ``sdft run`` needs; it does not import vLLM when nothing loaded it."""
    import sys

    module = sys.modules.get("sdft.generation.vllm_backend")
    if module is not None:
        module.shutdown_engine()


@dataclass(frozen=True)
class BackendSetup:
    """What a stage hands to ``load_backend``: the resolved backend, its model path and options."""

    name: str
    model_path: str
    options: dict
    record: dict  # for run records: backend and precision as requested and as chosen, why, endpoints

    def load(self, adapter: str | None, **extra) -> Backend:
        return load_backend(self.name, self.model_path, adapter, **self.options, **extra)


def _takes(cls: type, name: str) -> bool:
    """Whether a backend names ``name`` among its parameters (a bare ``**options`` does not count)."""
    import inspect
    return name in inspect.signature(cls).parameters


def backend_setup(config: EngineSettings) -> BackendSetup:
    """Resolve a stage config's :class:`EngineSettings` for its ``model`` (auto choices printed)."""
    requested, endpoints = config.backend, list(config.endpoint)
    if requested == "auto" and endpoints:
        requested = "openai"  # naming servers is choosing them
    if endpoints and requested != "openai":
        raise ConfigError(f"--endpoint applies to --backend openai, not '{requested}'")
    folder = None
    if requested == "auto":
        folder = resolve.resolve_model(config.model)
    choice = auto.choose(requested, config.precision, folder)
    cls = backend_class(choice.backend)
    # Checked once more for the backend chosen: under auto, a key only the other one takes stops here.
    options = check_backend_options(choice.backend, endpoints, list(config.backend_option))
    if _takes(cls, "precision"):
        options["precision"] = choice.precision
    if endpoints:
        options["endpoint"] = endpoints
    if choice.backend == "vllm":
        # here: vllm_backend imports this package (a cycle)
        from sdft.generation.vllm_backend import resolve_lora_mode, resolve_reserved_cpus
        # Resolved here so that the run records say how an adapter was applied (it changes the numerics).
        options["lora_mode"] = resolve_lora_mode(options.get("lora_mode", "auto"))
        # Recorded as resolved, like the precision: how many cores generated is part of a run's speed figures.
        options["reserved_cpus"] = resolve_reserved_cpus(options.get("reserved_cpus"))
    if hasattr(cls, "check_options"):  # before the options reach any record: a stage may never load the backend
        cls.check_options(options)
    path = folder or model_for_backend(choice.backend, config.model)
    # recordable: endpoint URLs may carry a key in their query string
    record = {**choice.record(), "options": recordable({k: v for k, v in options.items() if k != "precision"})}
    return BackendSetup(choice.backend, path, options, record)


def engine_key(record: dict, adapter: str | None) -> dict:
    """What of the resolved engine (a :class:`BackendSetup` record) changes the text a model writes, for the
    stages' keys: backend and precision, and ``lora_mode`` when vLLM folds an adapter into a merged copy
    (rounded once, in the weights, rather than per layer: another greedy answer now and then). The native
    way adds nothing: every vLLM adapter run before ``lora_mode`` existed applied it natively, and their
    caches stay valid."""
    key = {k: record[k] for k in ("backend", "precision")}
    if adapter and record.get("options", {}).get("lora_mode") == "merged":
        key["lora_mode"] = "merged"
    return key
