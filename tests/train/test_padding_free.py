"""--padding-free: each micro-batch in one row without padding learns what the padded batches learn."""

from __future__ import annotations

import json

import pytest
from test_train import config, write_json

from sdft.base.config import stage_key
from sdft.base.errors import ConfigError, SdftError
from sdft.train.config import TrainConfig
from sdft.train.stage import prepare, train

FP32_EAGER = {"precision": "fp32", "compile": "off", "batch_order": "index"}


@pytest.fixture
def mixed_lengths(tmp_path):
    """Answers from one word to past --max-length (the last is truncated), in index order: padded batches of
    4 carry much padding."""
    rows = [{"instruction": f"Question {i}: what comes next?", "input": "",
             "output": " ".join(["step"] * (1 + (i * 7) % 23) + ([f"word{i}"] * 200 if i == 5 else []))}
            for i in range(16)]
    return write_json(tmp_path / "mixed.json", rows)


def losses(result) -> list[float]:
    return [p["loss"] for p in result["loss"]]


def test_padding_free_gives_the_padded_loss_curve(tiny_model, mixed_lengths, tmp_path):
    padded = train(config(tiny_model, mixed_lengths, tmp_path / "padded", max_length=96, **FP32_EAGER))
    free = train(config(tiny_model, mixed_lengths, tmp_path / "free", max_length=96, padding_free=True,
                        **FP32_EAGER))
    assert padded["throughput"]["padding_efficiency"] < 0.8  # there was padding to leave out
    assert free["throughput"]["padding_free"] and not padded["throughput"]["padding_free"]
    assert losses(padded)[-1] < losses(padded)[0] - 0.05  # it learned
    # Examples that saw one another in one row, or a truncation skipped, would move these well past rounding.
    assert losses(free) == pytest.approx(losses(padded), rel=1e-4, abs=1e-5)
    recorded = json.loads((tmp_path / "free" / "train.json").read_text())
    assert recorded["config"]["padding_free"] is True


def test_a_padding_free_batch_is_one_row_that_restarts_positions(tiny_model, mixed_lengths, tmp_path):
    run = prepare(config(tiny_model, mixed_lengths, tmp_path / "out", max_length=96, max_steps=1,
                         padding_free=True, **FP32_EAGER))
    examples = [run.trainer.train_dataset[i] for i in range(4)]
    batch = run.trainer.data_collator(examples)
    sizes = [len(e["input_ids"]) for e in examples]
    assert max(sizes) <= 96 and len(set(sizes)) > 1
    assert batch["input_ids"].shape == (1, sum(sizes)) and "attention_mask" not in batch
    starts = [sum(sizes[:k]) for k in range(4)]
    assert (batch["position_ids"][0] == 0).nonzero().flatten().tolist() == starts
    assert batch["labels"][0, starts].eq(-100).all()  # no example learns the next one's first token


def test_conversations_train_padding_free_as_padded(tiny_model, tmp_path):
    """Whole conversations go to TRL as token ids with a completion mask (sdft.train.turns), not as texts."""
    def chat(i):
        return {"messages": [{"role": "user", "content": f"Question {i}?"},
                             {"role": "assistant", "content": "ok " * (1 + i % 5)},
                             {"role": "user", "content": "And then?"},
                             {"role": "assistant", "content": "done " * (1 + i % 7)}]}

    data = write_json(tmp_path / "chat.json", [chat(i) for i in range(8)])
    runs = [train(config(tiny_model, data, tmp_path / str(free), max_steps=4, padding_free=free, **FP32_EAGER))
            for free in (False, True)]
    assert runs[0]["data"]["assistant_turns_trained"] == runs[1]["data"]["assistant_turns_trained"] == 16
    assert losses(runs[1]) == pytest.approx(losses(runs[0]), rel=1e-4, abs=1e-5)


def test_a_model_that_lets_packed_examples_meet_is_refused(tiny_model, mixed_lengths, tmp_path, monkeypatch):
    import transformers.masking_utils as masking

    # What Bloom, OPT, Falcon or MPT do: a causal mask over the whole row, whatever the position ids.
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(SdftError, match="lets the examples of a packed row attend to one another"):
        prepare(config(tiny_model, mixed_lengths, tmp_path / "out", max_steps=1, padding_free=True, **FP32_EAGER))


def test_padding_free_is_keyed_only_when_on_and_only_for_sft(tmp_path):
    base = {"data": "d.json", "out": str(tmp_path)}
    assert stage_key(TrainConfig(**base)) == stage_key(TrainConfig(**base, padding_free=False))
    assert stage_key(TrainConfig(**base)) != stage_key(TrainConfig(**base, padding_free=True))
    with pytest.raises(ConfigError, match="--padding-free applies to the sft objective"):
        TrainConfig(**base, padding_free=True, objective="onpolicy").validate()


@pytest.mark.slow  # compiling the tiny model's layers takes about a minute here
def test_compiled_layers_read_one_row_as_the_padded_batches(tiny_model, mixed_lengths, tmp_path):
    settings = {**FP32_EAGER, "compile": "on", "max_length": 96}
    padded = train(config(tiny_model, mixed_lengths, tmp_path / "padded", **settings))
    free = train(config(tiny_model, mixed_lengths, tmp_path / "free", padding_free=True, **settings))
    assert free["training"]["compiled"]
    assert losses(free) == pytest.approx(losses(padded), rel=1e-4, abs=1e-5)


ARCHITECTURES = {  # tiny random configurations; whether transformers 5.x masks a packed row per example
    "llama": ("LlamaConfig", {"num_key_value_heads": 2}, True),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2}, True),
    "mistral": ("MistralConfig", {"num_key_value_heads": 2}, True),
    "opt": ("OPTConfig", {"ffn_dim": 64, "word_embed_proj_dim": 32}, False),
    "falcon": ("FalconConfig", {}, False),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_the_check_accepts_models_that_mask_per_example_and_refuses_the_others(name):
    import torch
    import transformers

    from sdft.train.padding_free import check_examples_kept_apart

    config_class, extra, kept_apart = ARCHITECTURES[name]
    config = getattr(transformers, config_class)(vocab_size=300, hidden_size=32, num_attention_heads=4,
                                                 num_hidden_layers=2, intermediate_size=64, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if kept_apart:
        check_examples_kept_apart(model, "fp32")
    else:
        with pytest.raises(SdftError, match=f"this model \\({name}\\)"):
            check_examples_kept_apart(model, "fp32")
