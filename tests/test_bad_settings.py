"""Settings that would fail late with a traceback, or silently score wrong, are refused up front."""

import pytest

from sdft.base.config import from_dict
from sdft.base.errors import ConfigError
from sdft.tasks import get_task
from sdft.train.config import TrainConfig
from sdft.train.guards import check_lora_targets


def test_lora_targets_must_exist_in_the_model(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = from_dict(TrainConfig, {"data": "d.jsonl", "out": "o", "lora_targets": ["q_proj", "qkv_proj"]})
    with pytest.raises(ConfigError) as info:
        check_lora_targets(config, model)
    assert str(info.value).startswith(f"--lora-targets qkv_proj: no such module in {config.model}; its linear layers "
                                      "are down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj")
    for fine in (["q_proj", "v_proj"], ["all-linear"], ["model.layers.0.self_attn.q_proj"]):
        check_lora_targets(from_dict(TrainConfig, {"data": "d", "out": "o", "lora_targets": fine}), model)


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "1e9"])
def test_humaneval_timeout_must_be_positive_and_finite(timeout):
    with pytest.raises(ConfigError, match="option timeout must be between 0 and 3600 seconds"):
        get_task("humaneval", None, timeout=timeout)
    assert get_task("humaneval", None, timeout="0.5").timeout == 0.5


def test_diverged_training_is_an_error_not_a_saved_result(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from sdft.base.errors import SdftError
    from sdft.train.guards import check_finite

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = from_dict(TrainConfig, {"data": "d.jsonl", "out": "o", "learning_rate": 1e30})
    check_finite(model, config)
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight[0, 0] = float("nan")
    with pytest.raises(SdftError, match=r"training diverged: 1 trained tensor\(s\) hold NaN .*layers.1.self_attn.v_proj"):
        check_finite(model, config)


def test_lora_targets_are_checked_without_loading_weights(tiny_model, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    config = from_dict(TrainConfig, {"data": "d.jsonl", "out": "o", "model": str(tiny_model),
                                     "lora_targets": ["c_attn"]})
    with pytest.raises(ConfigError, match="--lora-targets c_attn: no such module"):
        check_lora_targets(config)
