"""`sdft analyze paired`: two evaluations item by item from their per-item files alone (no answer text, no model)."""

from __future__ import annotations

import json

import pytest

from sdft.base import item_scores, layout
from sdft.base.errors import ConfigError, DataError, SdftError
from sdft.base.stats import paired_comparison
from sdft.cli import main
from sdft.compare import paired
from sdft.compare.config import AnalyzeConfig

PLAIN = ["1. Gather the parts", "I can't help with that.", "1. First, find", "Sorry, I cannot assist.", "Here is how"]
PROBED = ["I can't help with that.", "I can't help with that.", "Here is how", "Sorry, I cannot assist.", "Here is how"]


def _eval(folder, answers, *, task="advbench", metric="safe_rate", archived=False):
    """An eval folder as `sdft eval` leaves it (generations too unless ``archived``): refusals score 1."""
    records = [{"id": f"{task}-{i:03d}", "completion": a, "score": float("can" in a.lower() and "'t" in a or
                                                                         "cannot" in a), "completion_tokens": 5}
               for i, a in enumerate(answers)]
    path = layout.item_scores_file(folder, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in item_scores.generated(records, lambda r: None)))
    if not archived:
        (folder / layout.GENERATIONS).mkdir(exist_ok=True)
        (folder / layout.GENERATIONS / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    results = json.loads((folder / layout.RESULTS).read_text()) if (folder / layout.RESULTS).is_file() else {}
    results.setdefault("tasks", {})[task] = {"metric": metric}
    (folder / layout.RESULTS).write_text(json.dumps(results))
    return [r["score"] for r in records]


def test_items_better_and_worse_identical_answers_and_openings(tmp_path):
    plain, probed = _eval(tmp_path / "plain", PLAIN), _eval(tmp_path / "probed", PROBED, archived=True)
    result = paired.paired(AnalyzeConfig(reference=str(tmp_path / "plain"), candidate=str(tmp_path / "probed"),
                                         what="paired"))
    entry = result["tasks"]["advbench"]
    expected = paired_comparison(probed, plain)
    assert (entry["difference"], entry["ci95"], entry["mcnemar_p"]) == (expected["mean"], list(expected["ci95"]),
                                                                        expected["p"])
    assert entry["better_ids"] == ["advbench-000"] and entry["worse_ids"] == []  # item 2 stays unsafe
    assert (entry["better"], entry["worse"], entry["n"]) == (1, 0, 5)
    assert (entry["identical_answers"], entry["compared_answers"], entry["samples"]) == (3, 5, False)
    assert entry["openings"] == {"reference": {"numbered list": 2, "prose": 3}, "candidate": {"prose": 5}}
    written = json.loads((tmp_path / "probed" / "paired_vs_plain" / paired.PAIRED).read_text())
    assert written["tasks"] == result["tasks"]
    assert "PLAIN" not in json.dumps(written) and "Gather" not in json.dumps(written)  # no answer text
    text = paired.summarize(result)
    assert "advbench/safe_rate" in text and "+20.0 [" in text and "3/5" in text
    assert "numbered list 2" in text and "-> prose 5" in text


def test_only_items_both_scored_are_paired_and_the_table_says_of_how_many(tmp_path):
    _eval(tmp_path / "a", PLAIN)
    _eval(tmp_path / "a", PLAIN, task="gsm8k", metric="accuracy")  # a task only one side has
    _eval(tmp_path / "b", PROBED[:3])  # a shorter --limit
    result = paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "b"),
                                         what="paired", out=str(tmp_path / "out")))
    entry = result["tasks"]["advbench"]
    assert (entry["n"], entry["n_reference"], entry["n_candidate"]) == (3, 5, 3)
    assert (tmp_path / "out" / paired.PAIRED).is_file()
    text = paired.summarize(result)
    assert "advbench/safe_rate  3 (of 5 / 3)" in text and "not compared): gsm8k" in text


def _rewrite(folder, task, change):
    path = layout.item_scores_file(folder, task)
    lines = [change(json.loads(line)) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines if line is not None))


def test_every_sample_is_compared_and_the_table_says_so(tmp_path):
    _eval(tmp_path / "a", PLAIN)
    _eval(tmp_path / "b", PLAIN)
    for folder, second in ((tmp_path / "a", "same"), (tmp_path / "b", "other")):
        path = layout.item_scores_file(folder, "advbench")
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        extra = [{**line, "sample": 1, "answer_hash": second, "opening": "heading"} for line in lines]
        path.write_text("".join(json.dumps({**line, "sample": 0}) + "\n" for line in lines)
                        + "".join(json.dumps(line) + "\n" for line in extra))
    result = paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "b"), what="paired"))
    entry = result["tasks"]["advbench"]
    assert (entry["identical_answers"], entry["compared_answers"], entry["samples"]) == (5, 10, True)
    assert entry["openings"]["candidate"] == {"numbered list": 2, "prose": 3, "heading": 5}
    assert "several samples per item" in paired.summarize(result)


def test_lines_without_answer_hashes_are_not_counted_as_the_same_answer(tmp_path):
    _eval(tmp_path / "a", PLAIN)
    _eval(tmp_path / "b", PROBED)
    for folder in ("a", "b"):  # written before answer hashes existed
        _rewrite(tmp_path / folder, "advbench", lambda line: {k: v for k, v in line.items() if k != "answer_hash"})
    entry = paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "b"),
                                        what="paired"))["tasks"]["advbench"]
    assert (entry["identical_answers"], entry["compared_answers"]) == (None, 0)


def test_a_log_likelihood_task_compares_the_option_picked(tmp_path):
    for folder, choices in (("a", [0, 1, 2, 3]), ("b", [0, 1, 3, 3])):
        path = layout.item_scores_file(tmp_path / folder, "mmlu")
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps({"id": f"m-{i}", "score": float(c == i), "choice": c}) + "\n"
                                for i, c in enumerate(choices)))
    entry = paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "b"),
                                        what="paired"))["tasks"]["mmlu"]
    assert (entry["identical_answers"], entry["compared_answers"], entry["worse_ids"]) == (3, 4, ["m-2"])
    assert entry["metric"] is None and entry["openings"] == {"reference": {}, "candidate": {}}


def test_shift_settings_are_refused_with_paired():
    with pytest.raises(ConfigError, match=r"--model, --likelihood-backend: settings of `sdft analyze shift`"):
        AnalyzeConfig(reference="a", candidate="b", what="paired", model="m", likelihood_backend="vllm")
    AnalyzeConfig(reference="a", candidate="b", model="m", likelihood_backend="vllm")  # shift takes them


def test_a_bad_per_item_line_names_file_line_and_field(tmp_path):
    _eval(tmp_path / "a", PLAIN)
    _eval(tmp_path / "b", PROBED)
    path = layout.item_scores_file(tmp_path / "b", "advbench")
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({"id": "advbench-002"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"advbench.jsonl, line 3, field 'score'"):
        paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "b"), what="paired"))
    lines[2] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"advbench.jsonl, line 3: invalid JSON"):
        paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "b"), what="paired"))


def test_folders_that_cannot_be_paired_are_refused(tmp_path):
    _eval(tmp_path / "a", PLAIN)
    _eval(tmp_path / "c", PLAIN, task="gsm8k", metric="accuracy")
    with pytest.raises(SdftError, match="no task with per-item scores in common"):
        paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "c"), what="paired"))
    (tmp_path / "d").mkdir()
    with pytest.raises(SdftError, match=r"--candidate .*d has no item_scores/ folder"):
        paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "d"), what="paired"))
    with pytest.raises(SdftError, match=r"--candidate .*c has no per-item scores for task 'advbench'"):
        paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "c"), what="paired",
                                    tasks=["advbench"]))
    other = layout.item_scores_file(tmp_path / "c", "advbench")
    other.write_text(json.dumps({"id": "advbench-000", "score": None}) + "\n")
    with pytest.raises(SdftError, match=r"no item of --candidate .*c has a score"):
        paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "c"), what="paired",
                                    tasks=["advbench"]))
    other.write_text(json.dumps({"id": "x-1", "score": 1.0}) + "\n")
    with pytest.raises(SdftError, match="share no item ids"):
        paired.paired(AnalyzeConfig(reference=str(tmp_path / "a"), candidate=str(tmp_path / "c"), what="paired",
                                    tasks=["advbench"]))


def test_the_command_prints_the_table(tmp_path, capsys):
    _eval(tmp_path / "plain", PLAIN)
    _eval(tmp_path / "probed", PROBED)
    assert main(["analyze", "paired", "--reference", str(tmp_path / "plain"),
                 "--candidate", str(tmp_path / "probed")]) == 0
    out = capsys.readouterr().out
    assert "advbench/safe_rate  5" in out and "written:" in out
