"""Format-aware distillation: the format guard, self-answer targets, their resumable second pass, their records."""

import json
from pathlib import Path

import pytest

from sdft.base.config import keyed_settings
from sdft.base.errors import ConfigError
from sdft.distill.config import DistillConfig
from sdft.distill.stage import distill

# Per example i ("Tom has i apples and buys i + 2 more"; the answer is 2i + 2): the seed's rewrite under the
# distillation prompt and its own answer under the task's prompt. Wrong answers say 999.
PROSE, LONG, LIST, WRONG = "prose", "long", "list", "wrong"
CASES = [  # (rewrite, own answer): what the guard and self-answer mode should make of it
    (LIST, PROSE),    # 0: format_mismatch; self
    (PROSE, WRONG),   # 1: accepted; rewrite
    (LONG, PROSE),    # 2: length_mismatch; self
    (WRONG, WRONG),   # 3: answer_mismatch (the filter's); original
    (PROSE, PROSE),   # 4: accepted; self
]


def _text(kind: str, i: int) -> str:
    total = 2 * i + 2
    if kind == LIST:
        return f"1. Tom starts with {i} apples.\n2. He buys {i + 2} more.\nThe answer is {total}."
    if kind == LONG:
        return f"Tom starts with {i} apples and then buys {i + 2} more apples at the shop. " * 4 + \
            f"The answer is {total}."
    return f"Tom has {i} + {i + 2} = {total} apples. The answer is {999 if kind == WRONG else total}."


class FormatDouble:
    """Test double backend: answers from :data:`CASES`; a prompt with the math distillation template's
    assistant prefix asks for a rewrite, any other for the seed's own answer. Counts the prompts it gets;
    with ``crash_in_own_batch`` set, the job dies in that batch of the own-answer pass."""

    tokenizer = model = None
    asked: list[str] = []
    crash_in_own_batch: int | None = None
    own_batches = 0

    def __init__(self, model, adapter=None, progress=True):
        pass

    def generate(self, prompts, params):
        from sdft.generation import Completion
        if "Great! Let's think step by step." not in prompts[0]:
            FormatDouble.own_batches += 1
            if FormatDouble.own_batches == FormatDouble.crash_in_own_batch:
                raise RuntimeError("the machine went away")
        out = []
        for prompt in prompts:
            FormatDouble.asked.append(prompt)
            i = int(prompt.split("Tom has ")[1].split(" ")[0])
            rewrite, own = CASES[i]
            text = _text(rewrite if "Great! Let's think step by step." in prompt else own, i)
            out.append(Completion(text, 10, len(text.split()), "stop"))
        return out


def _data(tmp_path: Path) -> Path:
    rows = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
             "answer": f"He has {i} + {i + 2} = {2 * i + 2} apples.\nThe answer is {2 * i + 2}."}
            for i in range(len(CASES))]
    path = tmp_path / "math.json"
    path.write_text(json.dumps(rows))
    return path


def _config(tmp_path, out="out", **kw) -> DistillConfig:
    return DistillConfig(data=str(_data(tmp_path)), out=str(tmp_path / out), model="double", task="math",
                         backend="test_distill_formats:FormatDouble", progress=False, batch_size=2, **kw)


def _records(tmp_path, out="out") -> list[dict]:
    return [json.loads(line) for line in (tmp_path / out / "distilled.jsonl").read_text().splitlines()]


def test_format_guard_rejects_a_list_rewrite_where_the_seed_answers_in_prose(tmp_path):
    stats = distill(_config(tmp_path, format_guard=True))
    records = _records(tmp_path)
    assert [r["sdft"]["reason"] for r in records] == ["format_mismatch", "accepted", "length_mismatch",
                                                     "answer_mismatch", "accepted"]
    assert "numbered list" in records[0]["sdft"]["detail"] and "prose" in records[0]["sdft"]["detail"]
    # Rejected: the original stays the target; accepted: the rewrite, as without the guard.
    assert [r["answer"] for r in records] == [r["sdft"]["rewrite"] if r["sdft"]["accepted"] else r["sdft"]["original"]
                                             for r in records]
    assert records[0]["sdft"]["self_answer"] == _text(PROSE, 0)
    assert stats["accepted"] == 2 and stats["reasons"]["format_mismatch"] == stats["reasons"]["length_mismatch"] == 1
    assert stats["format_guard"] == {"format_mismatch": 1, "length_mismatch": 1}
    assert stats["self_answers"]["passed"] == 3 and stats["self_answers"]["reasons"]["answer_mismatch"] == 2
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["format_guard"] == {"min_length_ratio": 0.5, "max_length_ratio": 2.0,
                                   "rejected": {"format_mismatch": 1, "length_mismatch": 1}}
    assert run["answer_template"]["name"] == "math" and "self_answer" not in run
    # The own answers were asked under the task's (training) prompt, without the reference.
    own = [p for p in FormatDouble.asked if "Great!" not in p]
    assert len(own) == 5 and not any("He has" in p for p in own)


def test_looser_length_bounds_accept_the_long_rewrite_and_key_the_stage(tmp_path):
    stats = distill(_config(tmp_path, format_guard=True, guard_max_length_ratio=10.0))
    assert stats["format_guard"] == {"format_mismatch": 1, "length_mismatch": 0}
    assert keyed_settings(_config(tmp_path, format_guard=True, guard_max_length_ratio=10.0))[
        "guard_max_length_ratio"] == 10.0
    with pytest.raises(ConfigError, match="set 'format_guard' too"):
        _config(tmp_path, guard_max_length_ratio=10.0)
    with pytest.raises(ConfigError, match="guard_min_length_ratio <= 1"):
        _config(tmp_path, format_guard=True, guard_min_length_ratio=1.5)


def test_self_answer_picks_the_own_answer_then_the_rewrite_then_the_original(tmp_path):
    from sdft.base.data import load_examples
    from sdft.train.data import choose_targets

    stats = distill(_config(tmp_path, self_answer=True))
    records = _records(tmp_path)
    assert [r["sdft"]["source"] for r in records] == ["self", "rewrite", "self", "original", "self"]
    assert [r["answer"] for r in records] == [_text(PROSE, 0), _text(PROSE, 1), _text(PROSE, 2),
                                             records[3]["sdft"]["original"], _text(PROSE, 4)]
    assert all(r["sdft"]["target"] == r["answer"] for r in records)
    # Without the guard, the list and the long rewrites stay accepted: the rewrite's verdict is the filter's.
    assert [r["sdft"]["accepted"] for r in records] == [True, True, True, False, True]
    assert stats["sources"] == {"self": 3, "rewrite": 1, "original": 1}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["self_answer"]["sources"] == {"self": 3, "rewrite": 1, "original": 1}
    assert run["self_answers"]["passed"] == 3 and "format_guard" not in run
    # Training on the file: SDFT (mix 1) learns each chosen target, vanilla (mix 0) the originals.
    examples = load_examples(tmp_path / "out" / "distilled.jsonl")
    sdft, counts = choose_targets(examples, 1.0, seed=42)
    assert [response for _, response, _ in sdft] == [r["answer"] for r in records]
    assert counts["rewritten"] == 4 and counts["sources"] == {"self": 3, "rewrite": 1}
    vanilla, _ = choose_targets(examples, 0.0, seed=42)
    assert [response for _, response, _ in vanilla] == [r["sdft"]["original"] for r in records]


def test_guard_and_self_answer_together_fall_back_to_guarded_rewrites(tmp_path):
    stats = distill(_config(tmp_path, format_guard=True, self_answer=True))
    assert [r["sdft"]["source"] for r in _records(tmp_path)] == ["self", "rewrite", "self", "original", "self"]
    assert stats["sources"] == {"self": 3, "rewrite": 1, "original": 1} and stats["accepted"] == 2


def test_a_crash_in_the_own_answer_pass_resumes_without_duplicates(tmp_path, monkeypatch):
    monkeypatch.setattr(FormatDouble, "own_batches", 0)
    monkeypatch.setattr(FormatDouble, "crash_in_own_batch", 2)
    with pytest.raises(RuntimeError, match="went away"):
        distill(_config(tmp_path, self_answer=True))
    monkeypatch.setattr(FormatDouble, "crash_in_own_batch", None)
    own = tmp_path / "out" / "self_answers.jsonl"
    assert len(own.read_text().splitlines()) == 2 and not (tmp_path / "out" / "distilled.jsonl").exists()
    FormatDouble.asked.clear()
    distill(_config(tmp_path, self_answer=True))
    assert len(FormatDouble.asked) == 3  # only the three own answers still missing; no rewrite again
    ids = [json.loads(line)["id"] for line in own.read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 5
    uninterrupted = _config(tmp_path, out="ref", self_answer=True)
    distill(uninterrupted)
    assert _records(tmp_path) == _records(tmp_path, "ref")


def test_the_modes_leave_earlier_stage_keys_alone_and_key_their_own(tmp_path):
    plain = _config(tmp_path, out="plain")
    assert {"format_guard", "self_answer", "answer_template", "guard_min_length_ratio"}.isdisjoint(
        keyed_settings(plain))
    distill(plain)
    distill(_config(tmp_path, out="guarded", format_guard=True))
    keys = {name: json.loads((tmp_path / name / "run.json").read_text())["settings_key"]
            for name in ("plain", "guarded")}
    assert keys["plain"] != keys["guarded"]
    assert not (tmp_path / "plain" / "self_answers.jsonl").exists()
    assert "self_answer" not in _records(tmp_path, "plain")[0]["sdft"]
    with pytest.raises(ConfigError, match="different settings"):  # no silent mix of the two in one folder
        distill(_config(tmp_path, out="plain", self_answer=True))
    with pytest.raises(ConfigError, match="set 'format_guard' or 'self_answer' too"):
        _config(tmp_path, answer_template="alpaca")


@pytest.mark.parametrize("rewrite, own, cut, reason", [
    ("1. Add.\n2. Done.", "We add them.", False, "format_mismatch"),
    ("- Add.\n- Done.", "- We add.\n- Done too.", False, None),      # both bulleted, similar length
    ("We add.", "We add them and then count all of them slowly.", False, "length_mismatch"),
    ("We add them and then count all of them slowly.", "We add.", False, "length_mismatch"),
    # An own answer cut by the budget is a lower bound: too long for it says nothing, too short still counts.
    ("We add them and then count all of them slowly.", "We add.", True, None),
    ("We add.", "We add them and then count all of them slowly.", True, "length_mismatch"),
    ("We add.", "", False, "length_mismatch"),                        # an empty own answer matches nothing
])
def test_the_guard_compares_opening_then_length(rewrite, own, cut, reason):
    from sdft.distill.formats import guard

    decision = guard(rewrite, own, 0.5, 2.0, own_cut=cut)
    assert (decision.reason if decision else None) == reason
