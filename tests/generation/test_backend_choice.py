"""--backend auto / --precision auto: what they choose, that it is printed, and how stages record it."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from sdft.base import hardware
from sdft.base.errors import ConfigError
from sdft.generation import auto, backend_setup


@pytest.fixture
def cpu(monkeypatch):
    """Pretend hardware: set ``cpu.bf16`` (units) / ``cpu.bf16_speedup`` / ``cpu.cuda`` / ``cpu.vllm`` in a test."""
    state = SimpleNamespace(bf16=True, bf16_speedup=2.5, cuda=False, vllm=(True, "vLLM supports LlamaForCausalLM"),
                            cores=2)
    monkeypatch.setattr(auto, "cpu_bf16_support", lambda: state.bf16)
    monkeypatch.setattr(hardware, "_bf16_units", lambda: ["avx512_bf16"] if state.bf16 else [])
    monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda: state.bf16_speedup if state.bf16 else None)
    monkeypatch.setattr(auto, "cuda_available", lambda: state.cuda)
    monkeypatch.setattr(auto, "vllm_installed", lambda: state.vllm is not None)
    monkeypatch.setattr(auto, "vllm_supports", lambda folder: state.vllm)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(state.cores)))
    return state


def test_auto_backend_prefers_vllm_when_it_supports_the_model(cpu, tiny_model):
    assert auto.choose_backend("auto", str(tiny_model)) == ("vllm", "vLLM supports LlamaForCausalLM")
    cpu.vllm = (False, "vLLM does not support FancyForCausalLM")
    assert auto.choose_backend("auto", str(tiny_model)) == ("hf", "vLLM does not support FancyForCausalLM")
    cpu.vllm = None
    assert auto.choose_backend("auto", str(tiny_model)) == ("hf", "vLLM is not installed")
    assert auto.choose_backend("hf", str(tiny_model)) == ("hf", "requested")


def test_auto_precision_is_bf16_only_where_measured_faster(cpu):
    assert auto.generation_precision("auto", "vllm") == "bf16"
    assert auto.generation_precision("auto", "hf") == "fp32"  # HF bf16 decoding was slower on a CPU
    cpu.bf16_speedup = 0.5  # bf16 units whose matmuls measured slower than fp32's (an Intel Xeon without AMX)
    assert auto.generation_precision("auto", "vllm") == "fp32"
    cpu.bf16_speedup, cpu.bf16 = 2.5, False
    assert auto.generation_precision("auto", "vllm") == "fp32"
    cpu.cuda = True
    assert auto.generation_precision("auto", "vllm") == auto.generation_precision("auto", "hf") == "bf16"
    assert auto.generation_precision("fp32", "vllm") == "fp32"
    assert auto.generation_precision("auto", "openai") == "server"
    with pytest.raises(ConfigError, match="server"):
        auto.generation_precision("bf16", "openai")


def _config(**kw):
    values = {"backend": "auto", "precision": "auto", "endpoint": [], "backend_option": [], "model": "m"}
    return SimpleNamespace(**{**values, **kw})


def test_setup_resolves_prints_and_records(cpu, tiny_model, capsys):
    setup = backend_setup(_config(model=str(tiny_model), backend_option=["kv_cache_gib=3", "enforce_eager=true"]))
    assert setup.name == "vllm" and setup.model_path == str(tiny_model)
    assert setup.options == {"kv_cache_gib": 3, "enforce_eager": True, "precision": "bf16", "lora_mode": "merged",
                             "reserved_cpus": 0}
    assert setup.record["options"]["lora_mode"] == "merged"  # how an adapter is applied is on record
    assert setup.record["options"]["reserved_cpus"] == 0  # and how many cores computed
    assert setup.record["backend"] == "vllm" and setup.record["requested_backend"] == "auto"
    assert setup.record["precision"] == "bf16" and setup.record["cpu_bf16"] is True
    assert "generation backend vllm (vLLM supports LlamaForCausalLM), precision bf16" in capsys.readouterr().err
    hf = backend_setup(_config(model=str(tiny_model), backend="hf"))
    assert hf.name == "hf" and hf.options == {"precision": "fp32"}


def test_vllm_on_a_small_cpu_reserves_no_core_for_its_scheduler(cpu, tiny_model, monkeypatch):
    from sdft.generation import vllm_backend

    monkeypatch.setattr(vllm_backend, "_USER_RESERVED", None)
    resolve = vllm_backend.resolve_reserved_cpus
    assert resolve(None) == 0  # 2 cores: the reserved one would be half the compute
    cpu.cores = vllm_backend.SMALL_MACHINE_CPUS
    assert resolve(None) == 0
    cpu.cores = vllm_backend.SMALL_MACHINE_CPUS + 1
    assert resolve(None) is None  # vLLM's own choice
    assert resolve(2) == 2 and resolve(0) == 0  # asked for: given, on any machine
    monkeypatch.setattr(vllm_backend, "_USER_RESERVED", "1")  # the user's VLLM_CPU_NUM_OF_RESERVED_CPU
    assert resolve(None) == 1 and resolve(0) == 0
    with pytest.raises(ConfigError, match="reserved_cpus must be 0 or more"):
        resolve(-1)
    monkeypatch.setattr(vllm_backend, "_USER_RESERVED", "one")
    with pytest.raises(ConfigError, match="VLLM_CPU_NUM_OF_RESERVED_CPU must be a number of cores"):
        resolve(None)
    cpu.cuda = True
    assert resolve(None) is None and resolve(1) is None  # a GPU engine binds no CPU threads
    cpu.cuda, cpu.cores = False, 2
    setup = backend_setup(_config(model=str(tiny_model), backend="vllm", backend_option=["reserved_cpus=1"]))
    assert setup.options["reserved_cpus"] == setup.record["options"]["reserved_cpus"] == 1
    with pytest.raises(ConfigError, match="reserved_cpus must be an integer"):
        backend_setup(_config(model=str(tiny_model), backend="vllm", backend_option=["reserved_cpus=some"]))


def test_endpoints_choose_the_openai_backend(cpu):
    setup = backend_setup(_config(endpoint=["http://127.0.0.1:9/v1"]))
    assert setup.name == "openai" and setup.options["endpoint"] == ["http://127.0.0.1:9/v1"]
    assert setup.record["precision"] == "server" and "precision" not in setup.options
    with pytest.raises(ConfigError, match="--endpoint applies to --backend openai"):
        backend_setup(_config(backend="hf", endpoint=["http://127.0.0.1:9/v1"]))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        backend_setup(_config(backend="hf", backend_option=["nonsense"]))


def test_unknown_backend_option_is_one_clear_error(tiny_model):
    from sdft.generation import load_backend
    with pytest.raises(ConfigError, match="backend 'hf'.*colour"):
        load_backend("hf", str(tiny_model), None, colour="blue")


def test_distill_records_the_choice_and_refuses_to_mix_engines(cpu, tmp_path, tiny_model):
    """A resumed distillation must not switch engine or precision halfway (the text would differ)."""
    from sdft.distill.config import DistillConfig
    from sdft.distill.stage import distill

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": f"{i}."}) + "\n" for i in range(2)))
    common = dict(data=str(data), out=str(tmp_path / "o"), model=str(tiny_model), max_new_tokens=4,
                  progress=False, backend="hf")
    distill(DistillConfig(**common))
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["generation"]["backend"] == "hf" and run["generation"]["precision"] == "fp32"
    with pytest.raises(ConfigError, match="different settings"):
        distill(DistillConfig(**common, precision="bf16"))


def test_vllm_applies_adapters_natively_on_a_gpu_and_merged_on_a_cpu(cpu, tiny_model, capsys):
    assert backend_setup(_config(model=str(tiny_model))).options["lora_mode"] == "merged"
    cpu.cuda = True
    assert backend_setup(_config(model=str(tiny_model))).options["lora_mode"] == "native"
    chosen = backend_setup(_config(model=str(tiny_model), backend_option=["lora_mode=merged"]))
    assert chosen.options["lora_mode"] == "merged"  # the user's choice wins


def test_only_an_adapter_merged_for_vllm_adds_to_the_engine_key(cpu, tiny_model):
    """Stages key the engine by engine_key: lora_mode only where it changes the text (a merged adapter), so
    the seed's caches and those of adapters applied natively (every run before lora_mode) stay valid."""
    from sdft.generation import engine_key

    on_cpu = backend_setup(_config(model=str(tiny_model))).record
    assert engine_key(on_cpu, "runs/x/train/a") == {"backend": "vllm", "precision": "bf16", "lora_mode": "merged"}
    assert engine_key(on_cpu, None) == {"backend": "vllm", "precision": "bf16"}
    cpu.cuda = True
    on_gpu = backend_setup(_config(model=str(tiny_model))).record
    assert engine_key(on_gpu, "runs/x/train/a") == {"backend": "vllm", "precision": "bf16"}
    hf = backend_setup(_config(model=str(tiny_model), backend="hf")).record
    assert engine_key(hf, "runs/x/train/a") == {"backend": "hf", "precision": "bf16"}


@pytest.fixture
def no_model(monkeypatch):
    """Resolving, converting or loading a model fails the test: a config error must come first."""
    def loaded(*args, **kwargs):
        raise AssertionError("a model was resolved or loaded before the backend options were checked")

    for target in ("sdft.models.resolve.resolve_model", "sdft.models.resolve.load_model_and_tokenizer", "sdft.models.resolve.load_tokenizer",
                   "sdft.generation.load_backend"):
        monkeypatch.setattr(target, loaded)


@pytest.mark.parametrize("flags, message", [
    (["--backend", "hf", "--backend-option", "devise=cpu"],
     r"unknown --backend-option 'devise' for backend hf \(did you mean device\?\); valid for hf: device, dtype$"),
    (["--backend", "vllm", "--backend-option", "kv_cache_gb=4"],
     r"'kv_cache_gb' for backend vllm \(did you mean kv_cache_gib\?\); valid for vllm: device, dtype, kv_cache_gib, "
     r"lora_mode, request_chunk, reserved_cpus, or any vllm.LLM engine argument"),
    (["--backend", "vllm", "--backend-option", "max_model_length=2048"], r"did you mean max_model_len\?"),
    (["--backend", "vllm", "--backend-option", "kv_cache_gib=lots"],
     "kv_cache_gib must be a finite number, got 'lots'"),
    (["--backend", "hf", "--backend-option", "precision=bf16"], "not a backend option: use --precision"),
    (["--backend", "openai", "--endpoint", "http://127.0.0.1:9/v1", "--backend-option", "retry=2"],
     r"did you mean retries\?\); valid for openai: api_key_env, backoff, max_concurrency, max_reply_bytes, request_chunk, retries, "),
    (["--backend", "openai", "--endpoint", "http://127.0.0.1:9/v1", "--backend-option", "retries=1.5"],
     "retries must be an integer, got 1.5"),
])
def test_a_backend_option_typo_stops_the_stage_before_any_model(flags, message, tmp_path, no_model, capsys):
    """Unknown backend options reached the constructor only after the model was resolved (a GGUF converted)."""
    import re

    from sdft.cli import main

    code = main(["eval", "--tasks", "gsm8k", *flags, "--out", str(tmp_path / "X")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "X").exists()


def test_auto_refuses_a_key_no_backend_it_may_pick_takes(cpu, tiny_model, no_model):
    from sdft.base.config import from_dict
    from sdft.distill.config import DistillConfig
    from sdft.evaluate.config import EvalConfig

    with pytest.raises(ConfigError, match=r"'colour' for backend auto \(it picks hf or vllm\); valid for hf: device, "
                                          r"dtype; for vllm: device, dtype, kv_cache_gib"):
        from_dict(EvalConfig, {"tasks": ["gsm8k"], "backend_option": ["colour=blue"]})
    with pytest.raises(ConfigError, match="'colour' for backend hf"):
        from_dict(DistillConfig, {"data": "d.jsonl", "backend": "hf", "backend_option": ["colour=blue"]})
    cpu.vllm = None  # not installed: auto means hf
    with pytest.raises(ConfigError, match=r"'kv_cache_gib' for backend auto \(it picks hf\)"):
        from_dict(EvalConfig, {"tasks": ["gsm8k"], "backend_option": ["kv_cache_gib=4"]})


def test_valid_backend_options_pass_and_vllm_engine_arguments_are_forwarded(cpu, tiny_model):
    from sdft.base.config import from_dict
    from sdft.evaluate.config import EvalConfig
    from sdft.generation.vllm_backend import engine_arguments

    if auto.vllm_installed():  # read from vLLM's source (EngineArgs, LLM), not by importing it
        assert {"enforce_eager", "max_model_len", "gpu_memory_utilization"} <= engine_arguments()
    vllm_options = ["kv_cache_gib=4", "request_chunk=16", "lora_mode=merged", "enforce_eager=true",
                    "max_model_len=2048", 'compilation_config={"level": 0, "cudagraph_mode": "NONE"}']
    config = from_dict(EvalConfig, {"tasks": ["gsm8k"], "backend": "vllm", "backend_option": vllm_options})
    assert auto.parse_options(config.backend_option)["compilation_config"] == {"level": 0, "cudagraph_mode": "NONE"}
    from_dict(EvalConfig, {"tasks": ["gsm8k"], "backend": "hf", "backend_option": ["device=cpu", "dtype=bfloat16"]})
    from_dict(EvalConfig, {"tasks": ["gsm8k"], "endpoint": ["http://127.0.0.1:9/v1"],
                           "backend_option": ["max_concurrency=4", "timeout=5", "retries=0", "served_model=m"]})
    from_dict(EvalConfig, {"tasks": ["gsm8k"], "backend_option": ["kv_cache_gib=4"]})  # auto: vllm takes it
    # ... but once auto has picked hf (vLLM cannot run this model), it stops there, before any model loads.
    cpu.vllm = (False, "vLLM does not support FancyForCausalLM")
    with pytest.raises(ConfigError, match="'kv_cache_gib' for backend hf"):
        backend_setup(_config(model=str(tiny_model), backend_option=["kv_cache_gib=4"]))
    with pytest.raises(ConfigError, match="kv_cache_gib is given twice"):
        backend_setup(_config(model=str(tiny_model), backend_option=["kv_cache_gib=4", "kv_cache_gib=2"]))
