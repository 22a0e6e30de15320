"""--precision auto on a CPU: bf16 only where the CPU has bf16 units *and* they measured faster than fp32, measured
once per machine and kept, so that every process on it chooses alike."""

from __future__ import annotations

import json

import pytest

from sdft.base import hardware


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A CPU with AVX512-BF16 whose matmul speeds the test sets (GFLOP/s per dtype); counts measurements."""
    monkeypatch.setenv("SDFT_HOME", str(tmp_path))
    speeds = {"float32": 300.0, "bfloat16": 150.0, "measured": 0}

    def flops(dtype_name, size=hardware.MEASURE_SIZE, repeats=3):
        speeds["measured"] += 1
        return speeds[dtype_name] * 1e9

    monkeypatch.setattr(hardware, "_bf16_units", lambda: ["avx512_bf16"])
    monkeypatch.setattr(hardware, "matmul_flops", flops)
    hardware.cpu_bf16_speedup.cache_clear()
    yield speeds
    hardware.cpu_bf16_speedup.cache_clear()


def test_bf16_units_slower_than_fp32_choose_fp32(machine, tmp_path):
    assert hardware.cpu_has_native_bf16()  # the answers' kind: bf16 units
    assert hardware.cpu_bf16_speedup() == 0.5 and not hardware.cpu_prefers_bf16()  # the choice: fp32
    kept = json.loads((tmp_path / "hardware.json").read_text())
    (entry,) = kept.values()
    assert entry == {"fp32_gflops": 300.0, "bf16_gflops": 150.0, "bf16_speedup": 0.5}
    assert "avx512_bf16" in next(iter(kept)) and "threads" in next(iter(kept))


def test_bf16_units_faster_choose_bf16(machine):
    machine["bfloat16"] = 900.0
    assert hardware.cpu_bf16_speedup() == 3.0 and hardware.cpu_prefers_bf16()


def test_a_speedup_within_the_margin_keeps_fp32(machine, tmp_path):
    machine["bfloat16"] = 300.0 * (hardware.BF16_MIN_SPEEDUP - 0.05)
    assert not hardware.cpu_prefers_bf16()
    hardware.cpu_bf16_speedup.cache_clear()
    machine["bfloat16"] = 300.0 * (hardware.BF16_MIN_SPEEDUP + 0.05)
    (tmp_path / "hardware.json").unlink()  # another machine: measured again
    assert hardware.cpu_prefers_bf16()


def test_measured_once_per_machine_then_read_back(machine):
    hardware.cpu_bf16_speedup()
    assert machine["measured"] == 2
    hardware.cpu_bf16_speedup.cache_clear()  # another process on the same machine
    machine["bfloat16"] = 900.0  # what a second measurement would say: it is not taken
    assert hardware.cpu_bf16_speedup() == 0.5 and machine["measured"] == 2


def test_a_damaged_record_is_measured_again(machine, tmp_path):
    (tmp_path / "hardware.json").write_text('{"torn')
    assert hardware.cpu_bf16_speedup() == 0.5 and machine["measured"] == 2
    assert json.loads((tmp_path / "hardware.json").read_text())  # written whole again


def test_no_bf16_units_measures_nothing(machine, monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "_bf16_units", lambda: [])
    assert not hardware.cpu_has_native_bf16()
    assert hardware.cpu_bf16_speedup() is None and not hardware.cpu_prefers_bf16()
    assert machine["measured"] == 0 and not (tmp_path / "hardware.json").exists()


def test_the_real_measurement_gives_both_speeds():
    assert hardware.matmul_flops("float32", size=64, repeats=1) > 0
    assert hardware.matmul_flops("bfloat16", size=64, repeats=1) > 0
