"""Training on whole conversations (sdft.train.turns): the loss on every assistant turn, tool calls rendered by
the chat template (or written as text where it has no tool rendering), and single-turn data as before."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_train import config, write_json

from sdft.base.data import load_examples
from sdft.base.errors import SdftError
from sdft.base.templates import PROMPT_TEMPLATES
from sdft.train import data as train_data
from sdft.train.setup import sft_columns
from sdft.train.stage import prepare, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "base"))
from test_conversation import TOOL_CHAT  # the record with two assistant turns and a tool call

ALPACA = PROMPT_TEMPLATES["alpaca"]
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
# What each assistant turn of TOOL_CHAT teaches, end-of-turn token included: the call (in the template's own
# layout for Qwen2.5, in the same layout written as text for SmolLM2 and the tiny model), then the two answers.
LEARNED = [CALL_TEXT, "It is 21 degrees in Paris.", "You are welcome."]
PLAIN_CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                           {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def examples(tmp_path, *records):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return load_examples(path)


def model_with_tokenizer(tiny_model: Path, alias: str, out: Path) -> Path:
    """The tiny model's weights beside a real model's tokenizer: ``sdft train``'s whole preparation (TRL's
    dataset included) runs with that tokenizer, without loading the real model."""
    from sdft.models.resolve import load_tokenizer

    out.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (out / name).write_bytes((tiny_model / name).read_bytes())
    load_tokenizer(alias).save_pretrained(out)
    return out


def expected_labels(ids: list[int], tokenizer, learned: list[str]) -> list[int]:
    """The labels the turns in ``learned`` should get, found independently of sdft.train.turns: each one's
    tokens (its end-of-turn token included) right after the next ``<|im_start|>assistant\\n`` header."""
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    labels, at = [-100] * len(ids), 0
    for text in learned:
        turn = tokenizer(text + tokenizer.eos_token, add_special_tokens=False).input_ids
        at = next(i for i in range(at, len(ids)) if ids[i:i + len(header)] == header) + len(header)
        assert ids[at:at + len(turn)] == turn, f"turn {text!r} is not tokenized on its own boundaries"
        labels[at:at + len(turn)] = turn
        at += len(turn)
    return labels


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_sdft_train_learns_every_assistant_turn_of_a_tool_conversation(alias, tiny_model, tmp_path):
    """The acceptance test of multi-turn training: ``sdft train``'s preparation on a messages file with two
    assistant answers and a tool call gives TRL labels on exactly the assistant turns, token by token."""
    model = model_with_tokenizer(tiny_model, alias, tmp_path / "model")
    run = prepare(config(model, write_json(tmp_path / "d.json", [TOOL_CHAT]), tmp_path / "out", max_steps=1,
                         batch_size=1, max_length=1024))
    tokenizer = run.trainer.processing_class
    row = run.trainer.train_dataset[0]
    assert row["labels"] == expected_labels(row["input_ids"], tokenizer, LEARNED)
    # What is not learned: the system text with the tool list, the user turns, the tool's answer, the headers.
    prompt_side = tokenizer.decode([i for i, label in zip(row["input_ids"], row["labels"]) if label == -100])
    assert all(text in prompt_side for text in ('"name": "get_weather"', "Weather in Paris?", '{"temp": 21}',
                                                "Thanks!", "<|im_start|>assistant\n"))
    assert run.counts["loss_on"] == "all_turns" and run.counts["assistant_turns_trained"] == 3
    if alias.startswith("qwen"):  # the template's own tool rendering: its system turn lists the tools
        assert "# Tools" in prompt_side and "<tools>" in prompt_side


def test_last_turn_option_and_single_turn_data_as_before(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    single, plain, tools = examples(tmp_path, {"messages": PLAIN_CHAT["messages"][2:]}, PLAIN_CHAT, TOOL_CHAT)
    for loss_on in ("all_turns", "last_turn"):
        [target], _ = train_data.build_targets([(single, single.response, False)], ALPACA, tok, "chat",
                                               loss_on=loss_on)
        assert target.input_ids is None and target.prompt.endswith("2+2?<|im_end|>\n<|im_start|>assistant\n")
    # Several turns without tools, last turn only: the one prompt / completion pair sdft always built.
    [target], _ = train_data.build_targets([(plain, plain.response, False)], ALPACA, tok, "chat", loss_on="last_turn")
    assert target.input_ids is None and target.response == "4<|im_end|>" and "Hello!" in target.prompt
    [target], _ = train_data.build_targets([(plain, plain.response, False)], ALPACA, tok, "chat")
    assert target.turns_trained == 2 and target.response.startswith("Hello!<|im_end|>")
    # Tools, last turn only: only the last answer carries a 1.
    [target], _ = train_data.build_targets([(tools, tools.response, False)], ALPACA, tok, "chat", loss_on="last_turn")
    learned = [i for i, m in zip(target.input_ids, target.mask) if m]
    assert target.turns_trained == 1 and tok.decode(learned) == "You are welcome.<|im_end|>"
    assert sft_columns([target], tok) == {"input_ids": [target.input_ids], "completion_mask": [target.mask]}


def test_a_distilled_target_replaces_the_last_turn(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    [ex] = examples(tmp_path, PLAIN_CHAT)
    [target], _ = train_data.build_targets([(ex, "Four.", True)], ALPACA, tok, "chat")
    learned = tok.decode([i for i, m in zip(target.input_ids, target.mask) if m])
    assert learned == "Hello!<|im_end|>Four.<|im_end|>" and target.rewritten


def test_mixed_single_and_multi_turn_data_tokenized_alike(tiny_model, tmp_path):
    """A file with both: single-turn targets become ids + mask too, with the mask TRL would have built."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    single, plain = examples(tmp_path, {"messages": PLAIN_CHAT["messages"][2:]}, PLAIN_CHAT)
    targets, _ = train_data.build_targets([(ex, ex.response, False) for ex in (single, plain)], ALPACA, tok, "chat")
    columns = sft_columns(targets, tok)
    ids, mask = columns["input_ids"][0], columns["completion_mask"][0]
    assert ids == tok(targets[0].prompt + targets[0].response).input_ids
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "4<|im_end|>"


def test_templates_that_cannot_mark_turns_are_refused(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    plain, tools = examples(tmp_path, PLAIN_CHAT, TOOL_CHAT)
    with pytest.raises(SdftError, match="tool calls needs the chat template"):
        train_data.build_targets([(tools, tools.response, False)], ALPACA, tok, "plain")
    # A template that writes only the latest assistant turn in full (as reasoning templates drop earlier thoughts).
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and "
                         "not loop.last %}...{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(SdftError, match="line 1.*assistant turn 1 differently.*--loss-on last_turn"):
        train_data.build_targets([(plain, plain.response, False)], ALPACA, tok, "chat")


def test_train_json_records_the_turns_learned(tiny_model, tmp_path):
    result = train(config(tiny_model, write_json(tmp_path / "d.json", [TOOL_CHAT, PLAIN_CHAT] * 2), tmp_path / "out",
                          max_steps=1, max_length=1024))
    record = json.loads((tmp_path / "out" / "train.json").read_text())
    assert record["config"]["loss_on"] == "all_turns" and result["data"]["loss_on"] == "all_turns"
    assert result["data"]["conversations"] == 4 and result["data"]["assistant_turns_trained"] == 10


def test_turn_options_keyed_only_when_set(tmp_path):
    """Every earlier run keeps its stage key: the options join it only at last_turn."""
    from sdft.base.config import keyed_settings
    from sdft.distill.config import DistillConfig

    assert "loss_on" not in keyed_settings(config("m", "d.json", tmp_path))
    assert keyed_settings(config("m", "d.json", tmp_path, loss_on="last_turn"))["loss_on"] == "last_turn"
    assert "rewrite_turns" not in keyed_settings(DistillConfig(data="d.json"))
    assert keyed_settings(DistillConfig(data="d.json", rewrite_turns="last_turn"))["rewrite_turns"] == "last_turn"
