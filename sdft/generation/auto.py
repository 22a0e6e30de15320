"""What ``--backend auto`` and ``--precision auto`` decide, and why (printed once, recorded by the stages).

Backend: vLLM when it is installed and its model registry knows the checkpoint's architecture, else
transformers. Precision: bf16 only where it is faster (see README "Fast generation"): vLLM on a GPU, or on a
CPU with bf16 units (AMX or AVX512-BF16) whose bf16 matmuls were measured faster than fp32's on this machine
(``sdft.base.hardware``: not every such CPU is), and LoRA training on such a CPU; transformers generation and
log-likelihood stay fp32 on a CPU, because HF bf16 decoding of a 0.5B model was *slower* than fp32 (39 vs 61
new tokens/s) on the same machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sdft.base import hardware
from sdft.base.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Choice:
    """The resolved backend and precision, and the reason, as recorded in run records."""

    backend: str
    precision: str
    requested_backend: str
    requested_precision: str
    reason: str

    def record(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "requested_backend": self.requested_backend,
                "requested_precision": self.requested_precision, "reason": self.reason,
                "cpu_bf16": cpu_bf16_support(),
                "cpu_bf16_speedup": None if cuda_available() else hardware.cpu_bf16_speedup()}


def cpu_bf16_support() -> bool:
    """Whether this CPU has bf16 matrix units (AMX or AVX512-BF16): one test for training and generation."""
    return hardware.cpu_has_native_bf16()


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def quiet_vllm_logs() -> None:
    """Call before the first ``import vllm``: vLLM logs dozens of INFO lines per engine start and shutdown,
    burying sdft's progress bars and one-line messages. ``VLLM_LOGGING_LEVEL=INFO`` brings them back."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def vllm_supports(folder: str) -> tuple[bool, str]:
    """Whether vLLM's registry knows the architecture in ``folder/config.json`` (and why not)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False, f"{folder} has no config.json"
    architectures = json.loads(config.read_text()).get("architectures") or []
    quiet_vllm_logs()
    from vllm import ModelRegistry  # imported only here: vLLM takes seconds to import
    supported = set(ModelRegistry.get_supported_archs())
    known = [arch for arch in architectures if arch in supported]
    if not known:
        return False, f"vLLM does not support {', '.join(architectures) or 'an unnamed architecture'}"
    if not cuda_available():
        sizes = _cpu_head_sizes()
        head = _head_dim(json.loads(config.read_text()))
        if sizes and head not in sizes:  # e.g. the tests' tiny model (head size 8)
            return False, f"vLLM's CPU attention does not take head size {head}"
    return True, f"vLLM supports {known[0]}"


def _head_dim(config: dict) -> int | None:
    text = config.get("text_config") or config
    heads = text.get("num_attention_heads")
    return text.get("head_dim") or (text["hidden_size"] // heads if heads and text.get("hidden_size") else None)


def _cpu_head_sizes() -> list[int] | None:
    """Head sizes the CPU build's attention kernels take (None when this vLLM does not say)."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
        return list(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, AttributeError):
        return None


def choose_backend(requested: str, model_folder: str | None) -> tuple[str, str]:
    """``(backend, reason)``: ``auto`` becomes vllm or hf; any other name is kept."""
    if requested != "auto":
        return requested, "requested"
    if not vllm_installed():
        return "hf", "vLLM is not installed"
    if model_folder is None:
        return "hf", "the model is not a local checkpoint"
    ok, why = vllm_supports(model_folder)
    return ("vllm" if ok else "hf"), why


def generation_precision(requested: str, backend: str) -> str:
    """fp32 or bf16 for a generation backend (``auto``: bf16 where it is faster here)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if backend == "openai":
        if requested != "auto":
            raise ConfigError("--precision does not reach a server: start it with the dtype you want "
                              "(vllm serve --dtype bfloat16)")
        return "server"
    if requested != "auto":
        return requested
    if backend == "vllm":
        return "bf16" if (cuda_available() or hardware.cpu_prefers_bf16()) else "fp32"
    if backend == "hf" and cuda_available():
        return "bf16"
    return "fp32"  # HF on a CPU (bf16 was slower for the 0.5B seed), remote servers (their own dtype)


def choose(requested_backend: str, requested_precision: str, model_folder: str | None) -> Choice:
    backend, reason = choose_backend(requested_backend, model_folder)
    precision = generation_precision(requested_precision, backend)
    choice = Choice(backend, precision, requested_backend, requested_precision, reason)
    if requested_backend == "auto" or (requested_precision == "auto" and backend in ("hf", "vllm")):
        print(f"sdft: generation backend {backend} ({reason}), precision {precision}", file=sys.stderr, flush=True)
    return choice


def parse_options(items: list[str]) -> dict:
    """``--backend-option KEY=VALUE`` pairs; values read as YAML scalars (``4`` -> 4, ``true`` -> True)."""
    import yaml

    options: dict = {}
    texts: dict[str, str] = {}
    for item in items:
        if texts and "=" not in item:
            # List settings are split at commas: a value holding one arrives in pieces, rejoined here.
            key = next(reversed(texts))
            texts[key] += "," + item
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--backend-option '{item}' must look like KEY=VALUE")
        if key.strip() in texts:
            raise ConfigError(f"--backend-option {key.strip()} is given twice")
        texts[key.strip()] = value
    for key, value in texts.items():
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            options[key] = value
    return options
