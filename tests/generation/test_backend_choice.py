"""--backend auto / --precision auto: what they choose, that it is printed, and how stages record it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sdft.base.errors import ConfigError
from sdft.generation import auto, backend_setup


@pytest.fixture
def cpu(monkeypatch):
    """Pretend hardware: set ``cpu.bf16`` / ``cpu.cuda`` / ``cpu.vllm`` in a test."""
    state = SimpleNamespace(bf16=True, cuda=False, vllm=(True, "vLLM supports LlamaForCausalLM"))
    monkeypatch.setattr(auto, "cpu_bf16_support", lambda: state.bf16)
    monkeypatch.setattr(auto, "cuda_available", lambda: state.cuda)
    monkeypatch.setattr(auto, "vllm_installed", lambda: state.vllm is not None)
    monkeypatch.setattr(auto, "vllm_supports", lambda folder: state.vllm)
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
    cpu.bf16 = False
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
    assert setup.options == {"kv_cache_gib": 3, "enforce_eager": True, "precision": "bf16", "lora_mode": "merged"}
    assert setup.record["options"]["lora_mode"] == "merged"  # how an adapter is applied is on record
    assert setup.record["backend"] == "vllm" and setup.record["requested_backend"] == "auto"
    assert setup.record["precision"] == "bf16" and setup.record["cpu_bf16"] is True
    assert "generation backend vllm (vLLM supports LlamaForCausalLM), precision bf16" in capsys.readouterr().err
    hf = backend_setup(_config(model=str(tiny_model), backend="hf"))
    assert hf.name == "hf" and hf.options == {"precision": "fp32"}


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
