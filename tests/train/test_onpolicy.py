"""The onpolicy arm through TRL's experimental SDFTTrainer: the API we rely on, LoRA and full runs, resume."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil

import pytest

from sdft.base import layout
from sdft.base.errors import ConfigError
from sdft.train import onpolicy
from sdft.train.config import TrainConfig
from sdft.train.stage import train

QA = [("What is 2 + 3?", "The answer is 5."), ("Add 1 and 1.", "2"), ("Name a fruit.", "An apple."), ("Say hi.", "Hello!")]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": q, "input": "", "output": a} for q, a in QA * 2]))
    return path


def config(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), out=str(out), objective="onpolicy", max_steps=2, batch_size=2,
                grad_accum=2, learning_rate=5e-2, lr_scheduler="constant", max_length=256, save_steps=100,
                logging_steps=100, onpolicy_max_new_tokens=8)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------ TRL's API we rely on

def test_trl_version_and_sdft_api_we_rely_on():
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    from packaging.specifiers import SpecifierSet
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("trl"))
    assert version("trl") in SpecifierSet(pin.removeprefix("trl"))
    fields = {f.name: f for f in dataclasses.fields(SDFTConfig)}
    needed = set(onpolicy._TRL_NAMES.values()) | {"num_generations", "teacher_sync_steps", "max_prompt_length",
                                                  "shuffle_dataset", "disable_dropout"}
    assert needed <= set(fields)
    assert fields["teacher_model_kind"].default == "base"  # our default teacher is also TRL's
    params = inspect.signature(SDFTTrainer.__init__).parameters
    assert {"model", "args", "train_dataset", "processing_class", "peft_config", "callbacks"} <= set(params)


def test_divergence_alpha_one_is_reverse_kl_and_zero_forward_kl():
    """What --onpolicy-divergence means: TRL's alpha 1 is KL(student || teacher), alpha 0 KL(teacher || student)."""
    import torch
    from trl.experimental.sdft.loss_utils import compute_divergence

    torch.manual_seed(0)
    student = torch.log_softmax(torch.randn(3, 7), -1)
    teacher = torch.log_softmax(torch.randn(3, 7), -1)
    reverse = (student.exp() * (student - teacher)).sum(-1)
    forward = (teacher.exp() * (teacher - student)).sum(-1)
    assert torch.allclose(compute_divergence(student, teacher, 1.0), reverse, atol=1e-6)
    assert torch.allclose(compute_divergence(student, teacher, 0.0), forward, atol=1e-6)


# ------------------------------------------------------------------------------------------- training runs

def test_lora_run_trains_saves_and_records_its_generation_cost(tiny_model, data, tmp_path):
    from safetensors.torch import load_file

    result = train(config(tiny_model, data, tmp_path / "out", save_steps=1))
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss.png").is_file()
    weights = load_file(out / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)  # B starts at zero
    record = json.loads((out / "train.json").read_text())
    assert record["training"]["objective"] == "onpolicy" and record["training"]["steps"] == 2
    cost = record["onpolicy"]
    assert cost["answers_sampled"] == 8 and 0 < cost["generated_tokens"] <= 8 * 8  # 2 steps x batch 4, 8 tokens
    assert cost["settings"]["teacher_model_kind"] == "base" and cost["settings"]["distillation_alpha"] == 1.0
    assert len(cost["distillation_loss"]) == 2 and [p["step"] for p in result["loss"]] == [1, 2]
    assert not (out / "checkpoints").exists()


def test_full_run_changes_the_weights(tiny_model, data, tmp_path):
    import torch
    from safetensors.torch import load_file

    train(config(tiny_model, data, tmp_path / "full", method="full", onpolicy_teacher="ema",
                 onpolicy_loss="topk_logits", onpolicy_divergence=0.5, onpolicy_topk=20))
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(tmp_path / "full" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_from_a_checkpoint_finishes_with_the_same_weights(tiny_model, data, tmp_path):
    import torch
    from safetensors.torch import load_file

    settings = dict(max_steps=4, save_steps=2, keep_checkpoints=True)
    train(config(tiny_model, data, tmp_path / "whole", **settings))
    # A run that died after its step-2 checkpoint: only that checkpoint (and the run guard) survive.
    cut = tmp_path / "cut" / layout.CHECKPOINTS
    cut.mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / layout.CHECKPOINTS / "checkpoint-2", cut / "checkpoint-2")
    shutil.copy(tmp_path / "whole" / layout.CHECKPOINTS / layout.RUN_GUARD, cut / layout.RUN_GUARD)
    resumed = train(config(tiny_model, data, tmp_path / "cut", **settings, resume=True))
    assert resumed["training"]["resumed_from"] == "checkpoint-2"
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_teacher_sees_the_demonstration_without_eos_and_prompts_up_to_max_length(tiny_model, data, tmp_path,
                                                                              monkeypatch):
    """What reaches TRL: the dataset response as the privileged context (not the EOS appended for SFT
    targets, which would show up as literal text in the teacher's prompt), and our prompt budget."""
    import trl.experimental.sdft as trl_sdft

    seen = {}

    class Captured(Exception):
        pass

    def capture(**kwargs):
        seen.update(kwargs)
        raise Captured
    monkeypatch.setattr(trl_sdft, "SDFTTrainer", capture)
    with pytest.raises(Captured):
        train(config(tiny_model, data, tmp_path / "out"))
    contexts = set(seen["train_dataset"]["privileged_context"])
    assert contexts <= {a for _, a in QA} and len(contexts) > 1
    assert seen["args"].max_prompt_length == 256 and seen["args"].shuffle_dataset is False


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("settings, message", [
    ({"objective": "sft", "onpolicy_teacher": "ema"}, "onpolicy_teacher.* to --objective onpolicy only"),
    ({"onpolicy_divergence": 1.5}, "onpolicy_divergence"),
    ({"onpolicy_loss": "sampled_token", "onpolicy_divergence": 0.5}, "reverse KL only"),
    ({"onpolicy_teacher_prompt": "{prompt} only"}, "privileged_context"),
    ({"onpolicy_teacher_prompt": "{prompt} {privileged_context} {other}"}, "no other braces"),
    ({"method": "qlora"}, "lora or full"),
    ({"onpolicy_max_new_tokens": 0}, "onpolicy_max_new_tokens"),
])
def test_bad_onpolicy_settings_get_one_clear_line(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        config("m", tmp_path / "d.json", tmp_path / "o", **settings).validate()


def test_plain_template_mode_is_refused(tiny_model, data, tmp_path):
    with pytest.raises(ConfigError, match="chat-template"):
        train(config(tiny_model, data, tmp_path / "plain", template_mode="plain"))
