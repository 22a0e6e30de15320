"""Model cards (sdft.models.card): Hugging Face front matter the hub's own parser reads, the arm, the data and
its hash, and the evaluation results as model-index entries."""

import json

import pytest

from sdft.base import layout
from sdft.models import card


def _record(data_path: str, **data) -> dict:
    """A train.json as sdft train writes it (the fields a card reads)."""
    return {"config": {"model": "smollm2-135m-instruct", "method": "lora", "objective": "sft", "seed": 42,
                       "learning_rate": 1e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.0, "weight_decay": 0.0,
                       "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_targets": ["q_proj", "v_proj"],
                       "max_length": 1024, "system_prompt": "model"},
            "data": {"path": data_path, "sha256": "ab" * 32, "distilled": True, "examples": 4, "rewritten": 3,
                     "original": 1, "mix_ratio": 1.0, **data},
            "training": {"steps": 2, "epochs": 1.0, "global_batch": 8, "precision": "fp32"},
            "template": {"name": "alpaca", "mode": "chat"}, "loss": [{"step": 1, "loss": 2.0}], "final_loss": 1.5,
            "versions": {"sdft": "0.1.0"}}


def _results(value: float) -> dict:
    return {"tasks": {"gsm8k": {"metric": "accuracy", "metrics": {"accuracy": {"value": value, "ci95": [0.1, 0.6],
                                                                               "n": 20}}},
                      "advbench": {"skipped": "no data"}}}


@pytest.mark.parametrize("data, interp, arm", [
    ({}, None, "sdft"), ({"mix_ratio": 0.0}, None, "vanilla"), ({"mix_ratio": 0.5}, None, "mix0.5"),
    ({"distilled": False, "mix_ratio": None}, None, "vanilla"),
    ({"mix_ratio": 0.0, "replay_examples": 2}, None, "replay"),
    ({"replay_examples": 2}, None, "sdft+replay"), ({}, {"alpha": 0.5}, "interp"),
])
def test_the_arm_is_named_as_sdft_run_names_it(data, interp, arm):
    record = _record("d/distilled.jsonl", **data)
    assert card.arm_name(record, interp) == arm
    text = card.card_text(record, interp=interp)
    assert f"(arm `{arm}`)" in text and ("replayed general examples" in text) is ("replay" in arm)
    assert ("a mix of rewrites" in text) is arm.startswith("mix")


def test_a_card_names_the_hub_model_the_data_and_the_results(tmp_path):
    from huggingface_hub import ModelCard

    distill = tmp_path / "distill-0123456789"
    distill.mkdir()
    (distill / layout.RUN_RECORD).write_text(json.dumps({"data": {"path": "../data/calls.json", "sha256": "cd" * 32}}))
    adapter = tmp_path / "sdft-abcdef0123"
    adapter.mkdir()
    (adapter / layout.TRAIN_RECORD).write_text(json.dumps(_record(str(distill / "distilled.jsonl"))))
    assert card.refresh(adapter) == [adapter / "README.md"]  # no merged/ folder: one card
    before = ModelCard((adapter / "README.md").read_text())
    assert before.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the alias's origin on the hub
    assert before.data.library_name == "peft" and before.data.datasets == ["calls.json"]
    assert {"sdft", "lora"} <= set(before.data.tags) and before.data.eval_results is None
    assert "cd" * 32 in before.text and "ab" * 32 in before.text and "dequantized" in before.text

    card.refresh(adapter, label="sdft", results=_results(0.4), baseline=_results(0.25))
    after = ModelCard((adapter / "README.md").read_text())
    [result] = after.data.eval_results  # the hub's parser reads the model-index
    assert (result.dataset_name, result.metric_type, result.metric_value) == ("gsm8k", "accuracy", 0.4)
    assert "| gsm8k/accuracy | 0.400 [0.100, 0.600] (n 20) | 0.250 [0.100, 0.600] (n 20) |" in after.text
    mtime = (adapter / "README.md").stat().st_mtime_ns
    card.refresh(adapter, label="sdft", results=_results(0.4), baseline=_results(0.25))
    assert (adapter / "README.md").stat().st_mtime_ns == mtime  # the same card is not written again


def test_no_card_without_a_training_record(tmp_path):
    assert card.refresh(tmp_path) == [] and not (tmp_path / "README.md").exists()


def test_base_model_of_a_hub_id_and_of_a_local_folder(tmp_path):
    assert card.base_model("Qwen/Qwen2.5-0.5B-Instruct")[0] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert card.base_model(str(tmp_path))[0] is None
    assert card.dataset_name({"data": {"path": "tatsu-lab/alpaca:train"}}) == "tatsu-lab/alpaca"
