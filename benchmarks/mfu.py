"""What the benchmarks divide by: the machine's matmul peak, measured now, and a model's matmul parameters."""

from __future__ import annotations

from pathlib import Path

from sdft.base.hardware import matmul_flops

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}  # a run's precision -> the torch dtype its peak is measured in


def matmul_peak(dtype_name: str) -> float:
    """Best FLOP/s of a 2048-square matmul over five tries, with all of torch's threads."""
    return matmul_flops(dtype_name, size=2048, repeats=5)


def matmul_parameters(folder: str) -> int:
    """Parameters in matmuls (an untied input embedding is a lookup), read from the safetensors headers."""
    from safetensors import safe_open

    total, embedding, tied = 0, 0, True
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
                if key.endswith("embed_tokens.weight"):
                    embedding = n
                if key.endswith("lm_head.weight"):
                    tied = False
    return total - (0 if tied else embedding)
