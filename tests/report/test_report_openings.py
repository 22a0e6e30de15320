"""The report's "How answers open" section: rewrites that open in a format the seed's own answers do not
use are flagged (the numbered-list drift of docs/results/gsm8k-qwen/), and every model's answers are counted."""

import json
from pathlib import Path

from sdft.base import layout
from sdft.base.layout import Arm, Manifest, StageRecord
from sdft.report import openings as report_openings
from sdft.report.openings import copies_note, counts, flagged
from sdft.report.stage import write_report


def test_rewrites_opening_far_more_often_with_a_list_than_the_seed_are_flagged():
    rewrites = counts(["1. step"] * 6 + ["prose"] * 4)
    lines = flagged(rewrites, {"gsm8k": counts(["prose"] * 10), "advbench": counts(["1. a"] + ["no"] * 9)})
    assert len(lines) == 1 and "6 of 10 accepted rewrites open with a numbered list" in lines[0]
    assert "gsm8k 0/10, advbench 1/10" in lines[0]
    # The seed itself answers this way on one task (50%): 60% is within the margin, nothing is flagged.
    assert flagged(rewrites, {"gsm8k": counts(["1. x"] * 5 + ["y"] * 5)}) == []
    assert flagged(rewrites, {}) == []  # no seed answers to compare with: no claim


def _record(original: str, rewrite: str, accepted: bool = True) -> dict:
    return {"original": original, "rewrite": rewrite, "accepted": accepted}


def test_rewrites_that_copy_the_original_are_counted_and_a_majority_is_called_out():
    call = 'weather.forecast(location="Paris", days=5)'
    mostly = [_record(call, call + "\n"), _record(call, " " + call), _record(call, "```python\n" + call + "\n```"),
              _record(call, call, accepted=False)]
    note = copies_note(mostly)
    assert note.startswith("**Copied targets:** 2 of 3 accepted rewrites repeat their original") and "noise" in note
    few = [_record(call, call), _record(call, "It calls weather.forecast."), _record(call, "Sure: " + call)]
    assert copies_note(few) == "1 of 3 accepted rewrites repeat their original answer (whitespace aside)."
    assert copies_note(few[1:]) == ""


def _eval(run_dir: Path, label: str, completions: list[str]) -> StageRecord:
    eval_dir = run_dir / layout.EVAL / f"{label}-0123456789"
    path = layout.generations_file(eval_dir, "advbench")
    path.parent.mkdir(parents=True)
    rows = [{"id": f"advbench-{i:03d}", "completion": c, "completion_tokens": 5, "score": 1.0}
            for i, c in enumerate(completions)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return StageRecord(str(eval_dir), {"tasks": {"advbench": {"metric": "safe_rate", "metrics": {},
                                                              "generations": "generations/advbench.jsonl"}}})


def test_the_report_shows_targets_and_answers_by_opening(tmp_path):
    distill_dir = tmp_path / layout.DISTILL / "distill-0123456789"
    distill_dir.mkdir(parents=True)
    records = [{"question": "q", "answer": "a", "sdft": {"id": str(i), "accepted": i < 3, "reason": "x",
                                                        "original": "The answer is 4.", "rewrite": "1. Add.\n2. Done."}}
               for i in range(4)]
    (distill_dir / layout.DISTILLED).write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = Manifest(name="known", model="m", data="d.json", task="math",
                        distill=StageRecord(str(distill_dir), {"examples": 4, "accepted": 3, "acceptance_rate": 0.75,
                                                              "reasons": {"accepted": 3, "x": 1}}))
    manifest.arms["seed"] = Arm("seed", "seed", _eval(tmp_path, "seed", ["I can't help with that."] * 4))
    manifest.arms["sdft"] = Arm("sdft", "mix", _eval(tmp_path, "sdft", ["1. First, buy"] * 3 + ["No."]),
                                params={"mix_ratio": 1.0, "sample_size": None},
                                train=StageRecord(str(tmp_path / layout.TRAIN / "sdft-x"), {}))
    manifest.write(tmp_path)
    text = Path(write_report(tmp_path)["md"]).read_text()
    section = text[text.index("## How answers open"):]
    assert "| original targets | prose 4/4 |" in section
    assert "| accepted rewrites | numbered list 3/3 |" in section
    assert "**Format check:** 3 of 3 accepted rewrites open with a numbered list" in section
    assert "| seed | prose 4/4 |" in section and "| sdft | numbered list 3/4 |" in section
    assert report_openings.INTRO in section
