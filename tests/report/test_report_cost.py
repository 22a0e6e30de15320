"""The report's cost table, from a run folder built here with known seconds in every stage record: each model's
row holds the seconds of the stages it owns, the shared distillation is one row in no model's total, an arm's
own distillation is in its total, and a stage without recorded seconds shows "–", never a made-up number."""

import json
from pathlib import Path

import pytest

from sdft.base import layout
from sdft.base.layout import Arm, Manifest, StageRecord
from sdft.report import cost
from sdft.report.stage import write_report

TASKS = {"gsm8k": 12.5, "advbench": 7.5}  # per-task seconds in every results.json


def _stage(folder: Path, result: dict, seconds: float | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    layout.finish_stage(folder, "k" * 64, {}, result, seconds=seconds)


def _eval(run_dir: Path, label: str, seconds: float | None = 25.0, compare: float | None = 4.0) -> StageRecord:
    folder = run_dir / layout.EVAL / f"{label}-0123456789"
    result = {"tasks": {t: {"metric": "accuracy", "seconds": s, "generations": f"generations/{t}.jsonl"}
                        for t, s in TASKS.items()},
              "generation": {"backend": "vllm", "precision": "bf16", "cpu_bf16": True, "cpu_bf16_speedup": 2.5},
              "provenance": {"host": "box"}}
    _stage(folder, result, seconds)
    for task in TASKS:  # three answers of 5 new tokens each
        layout.generations_file(folder, task).parent.mkdir(exist_ok=True)
        layout.generations_file(folder, task).write_text(
            "".join(json.dumps({"id": f"{task}{i}", "completion": "an answer", "completion_tokens": 5}) + "\n"
                    for i in range(3)))
    # a log-likelihood task's records: scores, no answer, no new tokens (not counted, not a reason for "–")
    result["tasks"]["mmlu"] = {"metric": "accuracy", "seconds": 0.0, "generations": "generations/mmlu.jsonl"}
    layout.generations_file(folder, "mmlu").write_text(json.dumps({"id": "q1", "score": 1.0}) + "\n")
    if label != "seed" and compare is not None:
        _stage(folder / layout.COMPARE, {"answer_shift": None, "weight_shift": None}, compare)
    return StageRecord(str(folder), result)


def _train(run_dir: Path, label: str, seconds: float | None = 100.0, **result) -> StageRecord:
    folder = run_dir / layout.TRAIN / f"{label}-abcdefabcd"
    result = {"data": {"task_examples": 8}, "training": {"steps": 10, "precision": "fp32", "device": "cpu"},
              "wall_time_s": 90.0, **result}
    _stage(folder, result, seconds)
    return StageRecord(str(folder), result)


def _distill(run_dir: Path, name: str, seconds: float | None, **stats) -> Path:
    folder = run_dir / layout.DISTILL / f"{name}-0123456789"
    _stage(folder, {"examples": 8, "accepted": 4, "acceptance_rate": 0.5, "reasons": {"accepted": 4, "no_answer": 4},
                    "completion_tokens": 300, "generation_seconds": 40.0, **stats}, seconds)
    return folder


def _run(run_dir: Path, *, compare_missing: bool = False) -> Manifest:
    main = _distill(run_dir, "distill", 50.0)
    guard = _distill(run_dir, "distill-guard", 20.0,
                     self_answers={"completion_tokens": 60, "passed": 5, "reasons": {"accepted": 5}})
    manifest = Manifest(name="costs", model="m", data="d.json", task="math",
                        distill=StageRecord(str(main), layout.finished_result(main)))
    models = {
        "vanilla": ("mix", {"mix_ratio": 0.0}, {}),
        "sdft": ("mix", {"mix_ratio": 1.0}, {}),
        "sdft+replay": ("sdft+replay", {"targets": "rewrites"},
                        {"data": {"task_examples": 8, "replay_examples": 2, "replay": {"source": "seed"}}}),
        "sdft-guard": ("sdft-guard", {"targets": "rewrites", "distill": str(guard)}, {}),
        "onpolicy": ("onpolicy", {"targets": "originals"}, {"onpolicy": {"generated_tokens": 777}}),
    }
    manifest.arms["seed"] = Arm("seed", "seed", _eval(run_dir, "seed", seconds=30.0))
    for label, (recipe, params, extra) in models.items():
        compare = None if compare_missing and label == "sdft" else 4.0
        manifest.arms[label] = Arm(label, recipe, _eval(run_dir, label, compare=compare), params=params,
                                   train=_train(run_dir, label, **extra))
    interp = _stage_interp(run_dir)
    manifest.arms["interp-a0.5"] = Arm("interp-a0.5", "interp", _eval(run_dir, "interp-a0.5"),
                                       params={"alpha": 0.5}, train=interp)
    manifest.write(run_dir)
    return manifest


def _stage_interp(run_dir: Path) -> StageRecord:
    folder = run_dir / layout.INTERP / "interp-a0.5-abcdefabcd"
    _stage(folder, {"seconds": 1.5}, 2.0)
    return StageRecord(str(folder), {"seconds": 1.5})


def _table(report: str) -> tuple[dict[str, dict[str, str]], str]:
    """The cost table's rows by model (cells by column name) and its caption."""
    section = report.split("## Cost per model\n\n")[1]
    lines = section.split("\n\n")[0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row)) for row in rows}, section.split("\n\n")[1]


@pytest.fixture
def report(tmp_path) -> str:
    _run(tmp_path)
    return Path(write_report(tmp_path)["md"]).read_text()


def test_each_model_row_holds_the_seconds_of_every_stage_it_owns(report):
    rows, _ = _table(report)
    vanilla = rows["vanilla"]
    assert vanilla["training (s)"] == "100.0 (10 steps, 10.00 s/step)"  # stage.json's, not train.json's 90
    assert (vanilla["evaluation (s)"], vanilla["comparison (s)"]) == ("25.0", "4.0")
    assert vanilla["total (s)"] == "129.0" and vanilla["tokens generated"] == "evaluation 30"
    seed = rows["seed"]
    assert (seed["training (s)"], seed["evaluation (s)"], seed["total (s)"]) == ("", "30.0", "30.0")
    interp = rows["interp-a0.5"]
    assert (interp["training (s)"], interp["total (s)"]) == ("2.0", "31.0")
    assert "vanilla's training not repeated" in interp["also"]
    assert rows["onpolicy"]["tokens generated"] == "training 777; evaluation 30"


def test_the_shared_distillation_is_one_row_and_in_no_models_total(report):
    rows, _ = _table(report)
    shared = rows["distillation"]
    assert shared["arm"] == "shared by sdft, sdft+replay"  # not vanilla, onpolicy, nor sdft-guard (its own)
    assert (shared["distillation (s)"], shared["total (s)"]) == ("50.0", "50.0")
    assert shared["tokens generated"] == "distillation 300"
    assert (rows["sdft"]["distillation (s)"], rows["sdft"]["total (s)"]) == ("shared", "129.0")
    for label in ("vanilla", "onpolicy", "interp-a0.5", "seed"):
        assert rows[label]["distillation (s)"] == ""


def test_an_arms_own_distillation_is_in_its_total(report):
    guard = _table(report)[0]["sdft-guard"]
    assert (guard["distillation (s)"], guard["total (s)"]) == ("20.0", "149.0")
    assert guard["tokens generated"] == "distillation 360; evaluation 30"  # rewrites and the seed's own answers
    assert "its own distillation (distill-guard-0123456789)" in guard["also"]


def test_seed_replay_answers_have_a_column_only_where_made(tmp_path, report):
    rows, caption = _table(report)
    assert rows["sdft+replay"]["seed replay answers (s)"] == "–" and rows["sdft"]["seed replay answers (s)"] == ""
    assert rows["sdft+replay"]["training examples"] == "8 + 2 replay"
    assert "no record keeps their seconds apart" in caption
    manifest = Manifest.read(tmp_path)
    del manifest.arms["sdft+replay"]
    header, _, caption = cost.cost_table(manifest, tmp_path)
    assert "seed replay answers (s)" not in header and "no record keeps" not in caption


def test_a_stage_without_recorded_seconds_shows_a_dash_and_the_total_a_lower_bound(tmp_path):
    _run(tmp_path, compare_missing=True)
    rows, caption = _table(Path(write_report(tmp_path)["md"]).read_text())
    assert (rows["sdft"]["comparison (s)"], rows["sdft"]["total (s)"]) == ("–", "≥ 125.0")
    assert "–: no record holds that stage's seconds" in caption
    assert rows["vanilla"]["total (s)"] == "129.0"


def test_stages_finished_before_stage_json_kept_the_time_read_their_own_records(tmp_path):
    manifest = Manifest("old", "m", "d.json", "math")
    manifest.arms["seed"] = Arm("seed", "seed", _eval(tmp_path, "seed", seconds=None))
    manifest.arms["vanilla"] = Arm("vanilla", "mix", _eval(tmp_path, "vanilla", seconds=None, compare=None),
                                   params={"mix_ratio": 0.0}, train=_train(tmp_path, "vanilla", seconds=None))
    header, rows, caption = cost.cost_table(manifest, tmp_path)
    vanilla = dict(zip(header, rows[1]))
    assert vanilla["training (s)"].startswith("90.0 ") and vanilla["evaluation (s)"] == "20.0"  # 12.5 + 7.5
    assert vanilla["comparison (s)"] == "–" and vanilla["total (s)"] == "≥ 110.0"
    assert "train.json's wall time" in caption and "the total then adds the rest (≥)" in caption


def test_evaluation_seconds_per_task_and_the_machine_in_the_caption(report):
    _, caption = _table(report)
    assert "| model | advbench | gsm8k |" in report and "| sdft-guard | 7.5 | 12.5 |" in report
    assert ("Machine, as recorded: host box; training on cpu in fp32; evaluation with vllm in bf16; CPU with "
            "native bf16: yes; its bf16 matmuls measured at 2.50x fp32's speed. The records name no processor "
            "model.") in caption


def test_the_html_report_has_the_cost_table(tmp_path, report):
    html = (tmp_path / layout.REPORT_HTML).read_text()
    assert "<th>total (s)</th>" in html and "<td>shared by sdft, sdft+replay</td>" in html
    assert "<th>advbench</th>" in html  # the seconds per task: a table of its own
