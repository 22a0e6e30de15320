"""The interp arm: WiSE-FT scaling of a LoRA adapter is exactly the interpolated model."""

from __future__ import annotations

import json

import pytest
from tiny_model import trained_lora

from sdft.base.errors import ConfigError, SdftError
from sdft.models.adapters import lora_shift
from sdft.train.interp import check_alphas, scale_adapter


def merged_weight(model_dir, adapter, key="model.layers.0.self_attn.q_proj.weight"):
    from sdft.models.resolve import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(model_dir), str(adapter), device="cpu")
    return model.state_dict()[key]


def test_scaled_adapter_interpolates_seed_and_tuned_weights(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    source = trained_lora(tiny_model, tmp_path / "vanilla")
    key = "model.layers.0.self_attn.q_proj.weight"
    seed = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()[key]
    tuned = merged_weight(tiny_model, source)
    assert not torch.allclose(seed, tuned)
    for alpha in (0.0, 0.25, 1.0):
        record = scale_adapter(source, tmp_path / f"a{alpha}", alpha)
        assert record["alpha"] == alpha and record["scaled_tensors"] == 4
        expected = seed + alpha * (tuned - seed)
        assert torch.allclose(merged_weight(tiny_model, tmp_path / f"a{alpha}"), expected, atol=1e-6)
        assert lora_shift(tmp_path / f"a{alpha}")["total"] == pytest.approx(alpha * lora_shift(source)["total"])
    scaled = tmp_path / "a0.25"
    assert (scaled / "tokenizer_config.json").is_file() and not (scaled / "train.json").exists()
    assert json.loads((scaled / "interp.json").read_text())["source_adapter"] == str(source)


def test_bad_alphas_and_sources_are_refused(tiny_model, tmp_path):
    assert check_alphas([0.5, 0.25, 0.5]) == [0.25, 0.5]
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        check_alphas([1.5])
    with pytest.raises(ConfigError, match="at least one alpha"):
        check_alphas([])
    with pytest.raises(SdftError, match="LoRA adapter"):
        scale_adapter(tiny_model, tmp_path / "x", 0.5)  # full weights, not an adapter
