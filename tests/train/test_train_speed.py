"""The fast training path learns what the previous one learned: same loss curve on the tiny model."""

from __future__ import annotations

import pytest
from test_train import config, repeated_data  # noqa: F401 (fixture)

from sdft.base import hardware
from sdft.train import speed as train_speed
from sdft.train.stage import prepare, train

# Before this change, on a CPU: fp32 weights and autocast off, every position through the LM head.
PREVIOUS = {"precision": "fp32", "response_only_logits": False, "compile": "off"}


def losses(result) -> list[float]:
    return [p["loss"] for p in result["loss"]]


def test_response_only_head_gives_the_same_loss_curve(tiny_model, repeated_data, tmp_path):
    before = losses(train(config(tiny_model, repeated_data, tmp_path / "before", **PREVIOUS)))
    after = losses(train(config(tiny_model, repeated_data, tmp_path / "after", precision="fp32")))
    assert len(before) == len(after) == 12 and before[-1] < before[0] - 0.05  # it learned
    assert after == pytest.approx(before, rel=1e-4, abs=1e-5)


def test_bf16_base_loss_curve_stays_within_rounding(tiny_model, repeated_data, tmp_path):
    before = losses(train(config(tiny_model, repeated_data, tmp_path / "before", **PREVIOUS)))
    result = train(config(tiny_model, repeated_data, tmp_path / "after", precision="bf16"))
    assert result["training"]["base_weights_dtype"] == "bfloat16"
    # bf16 keeps 8 bits of mantissa: per-step losses agree to a few parts in a hundred, the curve's shape holds.
    assert losses(result) == pytest.approx(before, rel=0.03, abs=0.02)


def test_lm_head_scores_only_response_positions(tiny_model, repeated_data, tmp_path, monkeypatch):
    import trl.trainer.utils as trl_utils

    rows = []
    chunked = trl_utils._ChunkedLogProbFunction

    class Counting:
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return chunked.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)
    for response_only in (False, True):
        run = prepare(config(tiny_model, repeated_data, tmp_path / str(response_only), max_steps=1,
                             response_only_logits=response_only))
        batch = run.trainer.data_collator([run.trainer.train_dataset[i] for i in range(4)])
        run.trainer.train()
        labels = batch["labels"][:, 1:]
        assert rows[-1] == (int((labels != -100).sum()) if response_only else labels.numel())


def test_lora_base_is_bf16_and_adapters_fp32(tiny_model, repeated_data, tmp_path):
    import torch

    run = prepare(config(tiny_model, repeated_data, tmp_path / "out", precision="bf16", max_steps=1))
    params = dict(run.trainer.model.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in params.items() if "lora_" not in n} == {torch.bfloat16}
    full = prepare(config(tiny_model, repeated_data, tmp_path / "full", precision="bf16", method="full",
                          max_steps=1))
    assert {p.dtype for p in full.trainer.model.parameters()} == {torch.float32}  # master weights


@pytest.mark.slow  # compiling the tiny model's layers takes about a minute here
def test_compiled_layers_give_the_same_loss_curve(tiny_model, repeated_data, tmp_path):
    before = losses(train(config(tiny_model, repeated_data, tmp_path / "before", **PREVIOUS)))
    result = train(config(tiny_model, repeated_data, tmp_path / "after", precision="fp32", compile="on"))
    assert result["training"]["compiled"]
    assert losses(result) == pytest.approx(before, rel=1e-4, abs=1e-5)


def test_compile_auto_only_where_it_pays(monkeypatch):
    monkeypatch.setattr(train_speed, "has_cpu_compiler", lambda: True)
    assert train_speed.should_compile("auto", False, 135_000_000, 128)
    assert not train_speed.should_compile("auto", False, 20_000, 128)  # the tiny test model
    assert not train_speed.should_compile("auto", False, 135_000_000, 8)  # a few steps
    assert not train_speed.should_compile("auto", True, 135_000_000, 128)  # GPU: not measured
    assert train_speed.should_compile("on", True, 1, 1) and not train_speed.should_compile("off", False, 10**9, 10**6)
    monkeypatch.setattr(train_speed, "has_cpu_compiler", lambda: False)
    assert not train_speed.should_compile("auto", False, 135_000_000, 128)


def test_the_training_record_names_the_measured_bf16_speed(tiny_model, repeated_data, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda: 0.475)  # what --precision auto decided from
    result = train(config(tiny_model, repeated_data, tmp_path / "out", precision="fp32", max_steps=1))
    assert result["training"]["cpu_bf16_speedup"] == 0.475


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda: 2.5)  # bf16 units, measured faster
    assert train_speed.auto_precision(cuda=False) == "bf16"
    monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda: 0.5)  # bf16 units, measured slower than fp32
    assert train_speed.auto_precision(cuda=False) == "fp32"
    monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda: None)  # no bf16 units
    assert train_speed.auto_precision(cuda=False) == "fp32"
    assert train_speed.base_dtype("lora", "bf16") == "bfloat16"
    assert train_speed.base_dtype("full", "bf16") == train_speed.base_dtype("lora", "fp32") == "float32"
