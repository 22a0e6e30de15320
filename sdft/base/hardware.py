"""What this machine's processor can do, for the precision choices of training and generation.

Two questions, kept apart. *Does the CPU have bf16 matrix units* (AVX512-BF16 or AMX) decides what kind of bf16
numbers it makes: oneDNN emulates bf16 elsewhere, with other roundings, so a run records it and `sdft run`
keeps one kind per run. *Is bf16 faster here* decides what ``--precision auto`` picks, and it is measured, not
read from the flags: on one 2-core Intel Xeon whose hypervisor shows AVX512-BF16 but no AMX, bf16 matmuls ran
at about half fp32's speed, while an AMD EPYC with the same flag ran them 2-5x faster (docs/performance.md).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from sdft.base.store import sdft_home, write_json

# bf16 is chosen where its matmuls measured at least this much faster than fp32's: a margin well above the
# timing noise, so that the choice does not flip between two measurements of one machine.
BF16_MIN_SPEEDUP = 1.3
MEASURE_SIZE = 2048  # square matmuls: large enough that oneDNN runs its main kernels, about a second in all


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates
    bf16, slower than fp32 and rounding differently."""
    return bool(_bf16_units())


def matmul_flops(dtype_name: str, size: int = MEASURE_SIZE, repeats: int = 3) -> float:
    """Best FLOP/s of a square matmul in ``dtype_name`` over a few tries, with all of torch's threads."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # first call: oneDNN picks and prepares its kernel
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best


@functools.cache
def cpu_bf16_speedup() -> float | None:
    """bf16 matmul throughput over fp32's on this CPU (None without bf16 units: not worth measuring there).
    Measured once per processor, torch version and thread count, and kept in ``$SDFT_HOME/hardware.json``,
    so every process on one machine makes the same choice."""
    units = _bf16_units()
    if not units:
        return None
    import torch

    key = f"{_processor_name()} | {'+'.join(units)} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    path = sdft_home() / "hardware.json"
    known = _read(path)
    if key not in known:
        fp32, bf16 = matmul_flops("float32"), matmul_flops("bfloat16")
        known[key] = {"fp32_gflops": round(fp32 / 1e9, 1), "bf16_gflops": round(bf16 / 1e9, 1),
                      "bf16_speedup": round(bf16 / fp32, 3)}
        write_json(path, known)
    return known[key]["bf16_speedup"]


def cpu_prefers_bf16() -> bool:
    """``--precision auto`` on a CPU: bf16 where the CPU has bf16 units and they were measured faster."""
    speedup = cpu_bf16_speedup()
    return speedup is not None and speedup >= BF16_MIN_SPEEDUP


def _bf16_units() -> list[str]:
    import torch

    probes = {"amx": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return [unit for unit, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()]


def _processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: measured again and written whole
