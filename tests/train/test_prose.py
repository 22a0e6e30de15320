"""The sdft-prose arm's targets: list enumeration removed, every word kept in order, code left alone."""

import re

import pytest

from sdft.base.errors import ConfigError
from sdft.train.prose import prose_pairs, without_enumeration

REWRITE = """To find how much Janet makes:

1. Janet's ducks lay 16 eggs per day.
2. She eats 3 and bakes with 4
   (7 in all)

3) She sells the rest: 16 - 7 = 9 eggs
   - at $2 each: 9 * 2 = 18

```python
1. not a list inside code
```
The answer is 18."""



def test_list_items_become_one_paragraph_with_every_word_in_order():
    prose = without_enumeration(REWRITE)
    assert prose.splitlines()[2] == ("Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4 (7 in all). "
                                     "She sells the rest: 16 - 7 = 9 eggs. at $2 each: 9 * 2 = 18.")
    assert "1. not a list inside code" in prose and prose.endswith("The answer is 18.")
    assert not re.search(r"^\s*(\d+[.)]|[-*+])\s", prose.replace("1. not a list", ""), flags=re.MULTILINE)
    assert re.findall(r"[A-Za-z$']+", prose) == re.findall(r"[A-Za-z$']+", REWRITE)
    assert prose.count("=") == REWRITE.count("=")
    assert re.findall(r"\d+ \w", prose) == re.findall(r"\d+ \w", REWRITE)  # numbers in the text, not markers


@pytest.mark.parametrize("text", ["No list here. The answer is 5.", "-5 degrees and 2.5 km", "", "```\n- a\n```"])
def test_text_without_a_list_is_unchanged(text):
    assert without_enumeration(text) == text


def test_the_transform_is_idempotent_and_counts_what_it_changed():
    class Example:
        id = "x"

    once = without_enumeration(REWRITE)
    assert without_enumeration(once) == once
    pairs, changed = prose_pairs([(Example, REWRITE, True), (Example, "Plain prose.", True)])
    assert changed == 1 and pairs[0][1] == once and pairs[1][1] == "Plain prose." and pairs[0][2] is True
    with pytest.raises(ConfigError, match="multi-turn target"):
        prose_pairs([(Example, [{"role": "assistant", "content": "1. a"}], True)])


def test_sdft_train_with_prose_targets_learns_the_rewrites_without_their_enumeration(tiny_model, tmp_path):
    import json

    from sdft.train.config import TrainConfig
    from sdft.train.stage import prepare

    rows = [{"id": f"r{i}", "instruction": f"question {i}", "input": "", "output": f"original {i}",
             "sdft": {"accepted": True, "reason": "ok", "rewrite": f"1. Step {i}\n2. Done", "original": f"original {i}"}}
            for i in range(4)]
    data = tmp_path / "distilled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"model": str(tiny_model), "data": str(data), "max_steps": 1, "batch_size": 2, "grad_accum": 1,
                "max_length": 128}
    prose = prepare(TrainConfig(**settings, out=str(tmp_path / "prose"), prose_targets=True))
    plain = prepare(TrainConfig(**settings, out=str(tmp_path / "plain")))
    assert prose.counts["made_prose"] == 4 and "made_prose" not in plain.counts
    eos = prose.trainer.processing_class.eos_token
    assert sorted(t.response for t in prose.targets) == [f"Step {i}. Done.{eos}" for i in range(4)]
    assert sorted(t.response for t in plain.targets) == [f"1. Step {i}\n2. Done{eos}" for i in range(4)]


def test_rules_and_fences_are_not_lists_and_originals_of_rejected_rewrites_stay():
    class Example:
        id = "x"

    assert without_enumeration("Intro\n* * *\nEnd") == "Intro\n* * *\nEnd"
    fenced = "~~~\n1. inside\n```\n2. still inside\n~~~\n3. outside"
    assert without_enumeration(fenced) == "~~~\n1. inside\n```\n2. still inside\n~~~\noutside."
    pairs, changed = prose_pairs([(Example, "1. a\n2. b", False), (Example, "1. a\n2. b", True)])
    assert [p[1] for p in pairs] == ["1. a\n2. b", "a. b."] and changed == 1
