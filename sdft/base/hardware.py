"""What this machine's processor can do, for the precision choices of training and generation."""

from __future__ import annotations


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX): there a bf16 matmul is
    several times faster than fp32 (docs/performance.md); elsewhere oneDNN emulates bf16, slower than fp32."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
