"""The paired section from per-item files: `sdft stats` recomputes every row from them alone and gets the
report's rows; runs made before the files existed keep their report (generations read instead); the seed-level
rows are `compare_seeds`' with the seed variance borrowed from every trained arm but interp; every model against
the seed model, an arm at several seeds with the borrowed variance counted once."""

import json
from pathlib import Path

import numpy as np
import pytest

from sdft.base import layout
from sdft.base.errors import ConfigError
from sdft.base.layout import Arm, Manifest, StageRecord
from sdft.base.seed_stats import compare_seeds, seed_level, seed_variance
from sdft.base.stats import Metric, paired_comparison
from sdft.report.config import StatsConfig
from sdft.report.paired import stats
from sdft.report.stage import write_report

ARMS = {"vanilla": ("mix", {"mix_ratio": 0.0, "sample_size": None}),
        "sdft": ("mix", {"mix_ratio": 1.0, "sample_size": None}),
        "replay": ("replay", {"targets": "originals"}),
        "interp-a0.5": ("interp", {"alpha": 0.5, "from": "vanilla"})}
SEEDS, ITEMS = (42, 43), 40


def _scores() -> dict[str, dict[int, list[float]]]:
    """0/1 scores per arm and seed on two tasks' items; arms better or worse by a few items, seeds shifted."""
    rng = np.random.default_rng(7)
    out = {}
    for k, arm in enumerate(["seed", *ARMS]):
        for seed in SEEDS if arm != "seed" else (None,):
            rate = 0.45 + 0.05 * k + (0.1 if seed == 43 else 0.0)
            out.setdefault(arm, {})[seed] = {task: (rng.random(ITEMS) < rate).astype(float).tolist()
                                             for task in ("gsm8k", "advbench")}
    return out


def _model(run_dir: Path, arm: str, seed: int | None, scores: dict, *, items: bool, generations: bool) -> Arm:
    label = arm if seed in (None, 42) else f"{arm}-s{seed}"
    eval_dir = run_dir / layout.EVAL / f"{label}-0123456789"
    eval_dir.mkdir(parents=True)
    tasks = {}
    for task, values in scores.items():
        entry = {"metric": "accuracy", "metrics": {"accuracy": Metric.of_scores(values).to_json()}}
        lines = [{"id": f"{task}-{i:03d}", "score": v} for i, v in enumerate(values)]
        if generations:
            path = layout.generations_file(eval_dir, task)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({**x, "completion": "ANSWER TEXT"}) + "\n" for x in lines))
            entry["generations"] = path.relative_to(eval_dir).as_posix()
        if items:
            path = layout.item_scores_file(eval_dir, task)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({**x, "opening": "prose"}) + "\n" for x in lines))
            entry["item_scores"] = path.relative_to(eval_dir).as_posix()
        tasks[task] = entry
    result = {"tasks": tasks}
    if arm == "seed":
        return Arm("seed", "seed", StageRecord(str(eval_dir), result))
    recipe, params = ARMS[arm]
    return Arm(label, recipe, StageRecord(str(eval_dir), result), params=params, seed=seed,
               train=StageRecord(str(run_dir / layout.TRAIN / f"{label}-abcdefabcd"), {}))


def _run(run_dir: Path, *, items: bool, generations: bool) -> Path:
    manifest = Manifest(name="known", model="m", data="d.json", task="math")
    for arm, by_seed in _scores().items():
        for seed, scores in by_seed.items():
            model = _model(run_dir, arm, seed, scores, items=items, generations=generations)
            manifest.arms[model.label] = model
    manifest.write(run_dir)
    return run_dir


def _paired(report: str) -> str:
    start = report.index("## Each arm vs vanilla")
    return report[start:report.index("\n## ", start + 1)]


@pytest.fixture
def old_run(tmp_path) -> Path:
    return _run(tmp_path / "old", items=False, generations=True)


@pytest.fixture
def items_run(tmp_path) -> Path:
    return _run(tmp_path / "items", items=True, generations=False)


def test_stats_recomputes_the_reports_rows_from_per_item_files_alone(old_run, items_run):
    old_report = Path(write_report(old_run)["md"]).read_text()  # eval folders of before: generations read
    new_report = Path(write_report(items_run)["md"]).read_text()
    recomputed = stats(StatsConfig(run_dir=str(items_run)))["markdown"]
    assert _paired(recomputed) == _paired(old_report) == _paired(new_report)
    assert _seed_rows(recomputed) == _seed_rows(old_report) == _seed_rows(new_report)
    assert "| sdft − vanilla (2 seeds) | advbench/accuracy | 40 × 2 |" in recomputed
    assert "### Same items at every seed?" in recomputed


def test_seed_level_rows_are_compare_seeds_borrowing_from_every_trained_arm_but_interp(items_run):
    text = stats(StatsConfig(run_dir=str(items_run)))["markdown"]
    scores = {arm: {seed: values["gsm8k"] for seed, values in by_seed.items()}
              for arm, by_seed in _scores().items() if arm != "seed"}
    expected = compare_seeds(scores, "vanilla", borrow=["vanilla", "sdft", "replay"])
    for arm in ("sdft", "replay", "interp-a0.5"):
        level, reps = expected[arm]["seed_level"], expected[arm]["replication"]
        low, high = level["ci95"]
        floor = " (floor)" if level["method"].endswith("(floor)") else ""
        wins = sum(r["wins"] for r in expected[arm]["per_seed"].values())
        losses = sum(r["losses"] for r in expected[arm]["per_seed"].values())
        assert (f"| {arm} − vanilla (2 seeds) | gsm8k/accuracy | 40 × 2 | {level['mean'] * 100:+.1f} "
                f"[{low * 100:+.1f}, {high * 100:+.1f}]{floor} | {wins} | {losses} | – |") in text
        assert (f"| {arm} − vanilla (2 seeds) | gsm8k/accuracy | 2 | {reps['coincidences']} | {reps['observed']} | "
                f"{reps['null_mean']:.1f} ± {reps['null_sd']:.1f} | {reps['p']:.3f} |") in text
    assert "gsm8k: vanilla, sdft, replay (3 df)" in text


def test_stats_refuses_an_evaluation_without_per_item_files(old_run):
    with pytest.raises(ConfigError, match=r"seed-0123456789: no per-item scores for task (gsm8k|advbench)"):
        stats(StatsConfig(run_dir=str(old_run)))


def test_stats_command_prints_the_section(items_run, capsys):
    from sdft.cli import main

    assert main(["stats", str(items_run)]) == 0
    assert "| sdft − vanilla | gsm8k/accuracy | 40 |" in capsys.readouterr().out
    assert main(["stats", str(items_run / "nothing")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


def test_per_item_files_win_over_generations(tmp_path):
    """An eval folder with both: the report reads the per-item file (here deliberately different)."""
    run_dir = _run(tmp_path, items=True, generations=True)
    manifest = Manifest.read(run_dir)
    path = layout.item_scores_file(manifest.arms["sdft"].eval.path(run_dir), "gsm8k")
    path.write_text("".join(json.dumps({"id": f"gsm8k-{i:03d}", "score": 1.0}) + "\n" for i in range(ITEMS)))
    correct = int(sum(_scores()["vanilla"][42]["gsm8k"]))
    report = Path(write_report(run_dir)["md"]).read_text()
    row = next(line for line in report.splitlines() if line.startswith("| sdft − vanilla | gsm8k/accuracy"))
    assert f"| {ITEMS - correct} | 0 |" in row  # every item right: better wherever vanilla failed, never worse


def test_export_keeps_what_stats_reads_and_no_answer_text(tmp_path):
    run = _run(tmp_path / "both", items=True, generations=True)  # generations hold answer text
    out = stats(StatsConfig(run_dir=str(run), export=str(tmp_path / "shared")))
    assert out["exported"] == 2 * (1 + len(ARMS) * len(SEEDS))
    shared = tmp_path / "shared"
    import shutil
    shutil.rmtree(run)  # the export alone: nothing may be read from the original run folder
    assert stats(StatsConfig(run_dir=str(shared)))["markdown"] == out["markdown"]
    files = [p for p in shared.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {layout.MANIFEST, "gsm8k.jsonl", "advbench.jsonl"}
    assert not any("ANSWER TEXT" in p.read_text() for p in files)
    assert all(layout.ITEM_SCORES in p.parts for p in files if p.name != layout.MANIFEST)


def test_export_into_the_run_folder_is_refused(items_run):
    with pytest.raises(ConfigError, match="outside the run folder"):
        stats(StatsConfig(run_dir=str(items_run), export=str(items_run / "shared")))


def _seed_rows(text: str) -> str:
    start = text.index("## Each model vs the seed")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_every_model_against_the_seed_model_over_its_training_seeds(items_run):
    text = stats(StatsConfig(run_dir=str(items_run)))["markdown"]
    rows = _seed_rows(text)
    scores = _scores()
    seed = scores["seed"][None]["gsm8k"]
    trained = ("vanilla", "sdft", "replay")  # interp is left out of the borrowing
    borrowed = seed_variance({arm: {s: v["gsm8k"] for s, v in scores[arm].items()} for arm in trained})
    for arm in ARMS:
        ours = [scores[arm][s]["gsm8k"] for s in SEEDS]
        diffs = np.subtract(ours, [seed, seed])
        level = seed_level(diffs, [paired_comparison(a, seed)["ci95"] for a in ours], borrowed, trained=1)
        low, high = level["ci95"]
        floor = " (floor)" if level["method"].endswith("(floor)") else ""
        each = ", ".join(f"s{s} {d * 100:+.1f}" for s, d in zip(SEEDS, diffs.mean(axis=1)))
        assert (f"| {arm} − seed (2 seeds) | gsm8k/accuracy | 40 × 2 | {level['mean'] * 100:+.1f} "
                f"[{low * 100:+.1f}, {high * 100:+.1f}]{floor}; {each} | {int((diffs > 0).sum())} | "
                f"{int((diffs < 0).sum())} | – |") in rows
    assert "gsm8k: vanilla, sdft, replay (3 df)" in rows
    assert "| seed − seed" not in rows and "Same items at every seed?" not in rows
    assert rows in Path(write_report(items_run)["md"]).read_text()


def test_one_seed_per_arm_gives_one_paired_row_per_model_against_the_seed(tmp_path):
    manifest = Manifest(name="one", model="m", data="d.json", task="math")
    for arm, by_seed in _scores().items():
        for seed in (None, 42):
            if seed in by_seed:
                model = _model(tmp_path, arm, seed, by_seed[seed], items=True, generations=False)
                manifest.arms[model.label] = model
    manifest.write(tmp_path)
    rows = _seed_rows(stats(StatsConfig(run_dir=str(tmp_path)))["markdown"])
    seed, vanilla = _scores()["seed"][None]["advbench"], _scores()["vanilla"][42]["advbench"]
    c = paired_comparison(vanilla, seed)
    low, high = c["ci95"]
    assert (f"| vanilla − seed | advbench/accuracy | 40 | {c['mean'] * 100:+.1f} [{low * 100:+.1f}, "
            f"{high * 100:+.1f}] | {c['wins']} | {c['losses']} | {c['p']:.3f} |") in rows
    assert "seeds)" not in rows and "borrowed" not in rows


def test_a_task_missing_at_one_seed_keeps_its_per_seed_rows_and_no_vanilla_section_is_needed(tmp_path):
    manifest = Manifest(name="partial", model="m", data="d.json", task="math")
    scores = _scores()
    for arm, seed, tasks in (("seed", None, ("gsm8k", "advbench")), ("vanilla", 42, ("gsm8k", "advbench")),
                             ("vanilla", 43, ("gsm8k",))):
        model = _model(tmp_path, arm, seed, {t: scores[arm][seed][t] for t in tasks}, items=True, generations=False)
        manifest.arms[model.label] = model
    manifest.write(tmp_path)
    text = stats(StatsConfig(run_dir=str(tmp_path)))["markdown"]
    assert text.startswith("No comparisons with vanilla")
    rows = _seed_rows(text)
    assert "| vanilla − seed (2 seeds) | gsm8k/accuracy | 40 × 2 |" in rows
    assert "| vanilla − seed (2 seeds) | advbench" not in rows
    assert "| vanilla − seed | advbench/accuracy | 40 |" in rows  # seed 42's, not dropped
    assert "| vanilla-s43 − seed |" not in rows and "| vanilla − seed | gsm8k" not in rows
    gaps = [100 * np.mean(np.subtract(scores["vanilla"][s]["gsm8k"], scores["seed"][None]["gsm8k"])) for s in SEEDS]
    assert f"; s42 {gaps[0]:+.1f}, s43 {gaps[1]:+.1f} |" in rows
    assert "Method and coverage: docs/statistics.md" in rows and "gsm8k: vanilla (1 df)" in rows


def test_a_model_identical_to_the_seed_on_graded_scores_gets_no_zero_width_interval(tmp_path):
    manifest = Manifest(name="same", model="m", data="d.json", task="math")
    graded = {"gsm8k": [0.25, 0.5, 0.75] * 5}
    for arm, seed in (("seed", None), ("vanilla", 42)):
        model = _model(tmp_path, arm, seed, graded, items=True, generations=False)
        manifest.arms[model.label] = model
    manifest.write(tmp_path)
    rows = _seed_rows(stats(StatsConfig(run_dir=str(tmp_path)))["markdown"])
    assert "| vanilla − seed | gsm8k/accuracy | 15 | +0.0 (no spread over items: no interval) | 0 | 0 | – |" in rows
