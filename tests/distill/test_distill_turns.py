"""Distilling conversations (sdft.distill.turns): every assistant turn rewritten with its history in context,
tool-call rewrites held to the original calls, and training reading the rewrites of every turn."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sdft.base.data import load_examples
from sdft.base.templates import PROMPT_TEMPLATES
from sdft.distill.config import DistillConfig
from sdft.distill.stage import distill
from sdft.train import data as train_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "base"))
from test_conversation import TOOL_CHAT  # the record with two assistant answers and a tool call

PROMPTS: list[str] = []


class TurnRewriterDouble:
    """Test double backend with the tiny model's chat template: rewrites an answer as "Rewritten: REFERENCE";
    repeats a tool call, except that it moves a call to Lyon when the reference's city is Rome."""

    model = None

    def __init__(self, model, adapter=None, progress=True):
        from transformers import AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(model)

    def generate(self, prompts, params):
        from sdft.generation import Completion
        PROMPTS.extend(prompts)
        out = []
        for prompt in prompts:
            reference = prompt.rsplit("### Reference Answer:\n", 1)[1].split("<|im_end|>")[0]
            text = reference.replace("Rome", "Lyon") if "<tool_call>" in reference else f"Rewritten: {reference}"
            out.append(Completion(text, 10, 8, "stop"))
        return out


def run(tmp_path, tiny_model, records, **kw):
    tmp_path.mkdir(exist_ok=True)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    PROMPTS.clear()
    stats = distill(DistillConfig(data=str(data), out=str(tmp_path / "out"), model=str(tiny_model),
                                  backend="test_distill_turns:TurnRewriterDouble", progress=False, **kw))
    rows = [json.loads(line) for line in (tmp_path / "out" / "distilled.jsonl").open()]
    return stats, rows


def test_every_turn_rewritten_in_context_and_calls_checked(tmp_path, tiny_model):
    rome = json.loads(json.dumps(TOOL_CHAT).replace("Paris", "Rome"))
    stats, rows = run(tmp_path, tiny_model, [TOOL_CHAT, rome])
    turns = rows[0]["sdft"]["turns"]
    assert [(t["turn"], t["accepted"], t["reason"]) for t in turns] == [(1, True, "accepted"), (3, True, "accepted")]
    assert turns[1]["rewrite"] == "Rewritten: It is 21 degrees in Paris."
    assert rows[0]["messages"][-1]["content"] == "Rewritten: You are welcome." and rows[0]["sdft"]["accepted"]
    # The rewritten call to Lyon for Rome is refused, whatever the (general) filter thinks of it.
    assert (rows[1]["sdft"]["turns"][0]["accepted"], rows[1]["sdft"]["turns"][0]["reason"]) == (False, "call_mismatch")
    assert stats["examples"] == 2 and stats["earlier_turns"]["rewritten"] == 4
    assert stats["earlier_turns"]["accepted"] == 3
    # The answer after the tool result was written with the call and the result in context, not what followed.
    [after_tool] = [p for p in PROMPTS if "### Reference Answer:\nIt is 21 degrees in Paris." in p]
    assert '"arguments": {"city": "Paris"}' in after_tool and '{"temp": 21}' in after_tool
    assert "Thanks!" not in after_tool and after_tool.endswith("<|im_start|>assistant\n")

    # Training on the distilled file learns every turn's rewrite; the checked call stays the original.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    examples = load_examples(tmp_path / "out" / "distilled.jsonl")
    pairs, _ = train_data.choose_targets(examples, None, seed=0)
    targets, _ = train_data.build_targets(pairs[:1], PROMPT_TEMPLATES["alpaca"], tok, "chat")
    learned = tok.decode([i for i, m in zip(targets[0].input_ids, targets[0].mask) if m])
    assert learned == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
                       "Rewritten: It is 21 degrees in Paris.<|im_end|>Rewritten: You are welcome.<|im_end|>")


def test_last_turn_option_and_single_turn_records_unchanged(tmp_path, tiny_model):
    _, rows = run(tmp_path, tiny_model, [TOOL_CHAT], rewrite_turns="last_turn")
    assert "turns" not in rows[0]["sdft"] and len(PROMPTS) == 1
    single = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    _, rows = run(tmp_path / "single", tiny_model, [single])
    assert set(rows[0]["sdft"]) == {"id", "accepted", "reason", "rewrite", "original", "finish_reason"}
