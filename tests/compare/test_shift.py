"""sdft shift: L2 norm of the weight change, for LoRA adapters (B @ A * scale) and full weights."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from sdft.base.errors import ConfigError, SdftError
from sdft.cli import main
from sdft.compare.config import ShiftConfig
from sdft.compare.weights import parameter_shift, summarize
from sdft.models.adapters import full_shift, lora_shift


def save_lora(model_dir, out, **lora):
    """An untrained LoRA on the tiny model, saved as an adapter folder (B = 0 at init)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(base, LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                              **lora}))
    peft.save_pretrained(out)
    return peft


def test_untouched_lora_has_zero_shift(tiny_model, tmp_path):
    save_lora(tiny_model, tmp_path / "init")
    result = lora_shift(tmp_path / "init")
    assert len(result["modules"]) == 4  # 2 layers x (q_proj, v_proj)
    assert result["total"] == 0 and all(v == 0 for v in result["modules"].values())


def test_lora_shift_is_the_norm_of_b_a_times_scale(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    save_lora(tiny_model, tmp_path / "a", use_rslora=True, alpha_pattern={"v_proj": 2})
    path = tmp_path / "a" / "adapter_model.safetensors"
    weights = load_file(path)
    torch.manual_seed(1)
    weights = {k: torch.randn_like(t) if "lora_B" in k else t for k, t in weights.items()}
    save_file(weights, path)
    result = lora_shift(tmp_path / "a")
    expected = {}
    for key, b in weights.items():
        if "lora_B" in key:
            a = weights[key.replace("lora_B", "lora_A")]
            alpha = 2 if "v_proj" in key else 8
            scale = alpha / math.sqrt(4)  # rsLoRA: alpha / sqrt(r)
            module = key.removeprefix("base_model.model.").removesuffix(".lora_B.weight")
            expected[module] = torch.linalg.norm((b.double() @ a.double()) * scale).item()
    assert result["modules"].keys() == expected.keys()
    for module, value in expected.items():
        assert result["modules"][module] == pytest.approx(value, rel=1e-9)
    assert result["total"] == pytest.approx(math.sqrt(sum(v * v for v in expected.values())))


def test_full_shift_per_module(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_model, tuned)
    assert full_shift(tiny_model, tuned)["total"] == 0
    weights = load_file(tuned / "model.safetensors")
    key = "model.layers.1.mlp.up_proj.weight"
    weights[key] = weights[key] + 0.5  # a change of L2 norm 0.5 * sqrt(numel)
    save_file(weights, tuned / "model.safetensors", metadata={"format": "pt"})
    result = full_shift(tiny_model, tuned)
    changed = {k: v for k, v in result["modules"].items() if v > 0}
    assert changed == {"model.layers.1.mlp.up_proj": pytest.approx(0.5 * math.sqrt(weights[key].numel()))}
    assert result["only_in_tuned"] == [] and result["only_in_base"] == []


def test_cli_prints_table_and_saves_json(tiny_model, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    save_lora(tiny_model, tmp_path / "ad")
    path = tmp_path / "ad" / "adapter_model.safetensors"
    save_file({k: t + 0.1 if "lora_B" in k else t for k, t in load_file(path).items()}, path)
    assert main(["shift", "--model", str(tiny_model), "--adapter", str(tmp_path / "ad")]) == 0
    printed = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in printed and "total (4 modules)" in printed
    saved = json.loads((tmp_path / "ad" / "weight_shift.json").read_text())
    assert saved["kind"] == "lora" and saved["total"] > 0 and set(saved["by_kind"]) == {"q_proj", "v_proj"}
    assert "total" in summarize(parameter_shift(ShiftConfig(adapter=str(tmp_path / "ad"), out=str(tmp_path))))
    assert (tmp_path / "weight_shift.json").is_file()


def test_clear_errors(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        ShiftConfig(adapter="a", tuned="b").validate()
    with pytest.raises(ConfigError, match="exactly one"):
        ShiftConfig().validate()
    with pytest.raises(SdftError, match="adapter_config.json"):
        lora_shift(tmp_path)
    save_lora(tiny_model, tmp_path / "ad")
    with pytest.raises(SdftError, match="--adapter"):  # a LoRA folder passed as full weights
        full_shift(tiny_model, tmp_path / "ad")
