"""`sdft run --dry-run`: every stage of the plan, cached or to run, with a time estimate from the stages on
disk, and no model loaded. The stages are test doubles: the plan only reads folders and records."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdft.base import layout
from sdft.base.config import to_dict
from sdft.base.keys import without_old_defaults
from sdft.experiment import pipeline, plan
from sdft.experiment.pipeline import load_run_config, stage_configs

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, backend: str | None = "fake", **extra) -> Path:
    rows = [{"instruction": f"Call the weather tool for city number {i}.", "input": "",
             "output": f'weather.get(city="City{i}")'} for i in range(4)]
    data = tmp_path / "calls.json"
    data.write_text(json.dumps(rows))
    config = {"name": "plan", "out_root": str(tmp_path / "runs"), "data": str(data), "task": "function_call",
              "distill": {"max_new_tokens": 8}, "train": {"max_steps": 2},
              "eval": {"tasks": ["openfunctions"], "limit": 2, "data": [f"openfunctions={data}"]},
              "arms": ["vanilla", "sdft", "interp"], "interp": {"alphas": [0.5]}, "train_seeds": [42, 43], **extra}
    if backend:  # none: --backend auto (a subprocess has no test double registered)
        config["distill"]["backend"] = config["eval"]["backend"] = backend
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Any model, tokenizer or engine load fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the dry run loaded a model")
    for name in ("load_model_and_tokenizer", "load_tokenizer", "resolve_model"):
        monkeypatch.setattr(f"sdft.models.resolve.{name}", refuse)
    monkeypatch.setattr("sdft.generation.fake.FakeBackend.__init__", refuse)
    for stage in ("sdft.evaluate.stage.evaluate", "sdft.distill.stage.distill", "sdft.train.stage.train"):
        monkeypatch.setattr(stage, refuse)


def _doubles(monkeypatch):
    monkeypatch.setattr("sdft.evaluate.stage.evaluate", lambda config: {"tasks": {}})
    monkeypatch.setattr("sdft.distill.stage.distill", lambda config: {"examples": 4, "generation_seconds": 30.0})
    monkeypatch.setattr(pipeline, "_train", lambda config: {"training": {"steps": config.max_steps,
                                                                         "objective": config.objective}})
    monkeypatch.setattr(pipeline, "_build", lambda model, folder, distilled: (
        pipeline._train(model.train) if model.train else {"seconds": 0.5}))
    monkeypatch.setattr(pipeline, "compare_with_seed", lambda *a: {"answer_shift": None, "weight_shift": None})
    monkeypatch.setattr("sdft.report.stage.write_report", lambda run_dir: {"md": "r.md", "html": "r.html"})


def test_a_new_run_plans_every_stage_to_run_and_writes_nothing(tmp_path, no_model, capsys):
    from sdft.cli import main

    path = _config(tmp_path)
    assert main(["run", str(path), "train.learning_rate=1e-4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    config = load_run_config(path, ["train.learning_rate=1e-4"])
    steps = plan.plan(config, stage_configs(config))
    expected = [("seed eval", "seed"), ("distill", "distill")]
    for label in ["vanilla", "sdft", "interp-a0.5", "vanilla-s43", "sdft-s43", "interp-a0.5-s43"]:
        expected += [("interp" if label.startswith("interp") else "train", label), ("eval", label),
                     ("compare", label)]
    assert [(s.stage, s.label) for s in steps] == expected + [("report", "")]
    rows = out.splitlines()[2:-1]
    assert len(rows) == len(steps)
    assert all(f" {s.folder.relative_to(config.run_dir)} " in row for row, s in zip(rows, steps, strict=True))
    assert all("to run  unknown (" in row for row in rows)
    assert out.splitlines()[-1] == "0 stage(s) cached, 20 to run, 20 without an estimate"
    assert not (tmp_path / "runs").exists()


def test_the_plan_names_the_folders_the_run_makes_and_estimates_from_them(tmp_path, monkeypatch):
    _doubles(monkeypatch)
    path = _config(tmp_path)
    config = load_run_config(path)
    before = plan.plan(config, stage_configs(config))
    pipeline.run(config, log=lambda line: None)
    run_dir = config.run_dir
    made = {p for p in run_dir.glob("*/*") if (p / layout.STAGE).is_file()} | set(run_dir.glob("eval/*/compare"))
    assert {s.folder for s in before if s.stage != "report"} == made
    after = plan.plan(config, stage_configs(config))
    assert [s.status for s in after] == ["cached"] * (len(after) - 1) + ["to run"]
    assert all(s.seconds is not None for s in after if s.stage != "report")  # run_stage timed every stage

    # Training took 40 s for 2 steps before: 4 steps of the same model are estimated at 80 s.
    for step in after:
        if step.stage == "train":
            record = json.loads((step.folder / layout.STAGE).read_text())
            (step.folder / layout.STAGE).write_text(json.dumps({**record, "seconds": 40.0}))
    longer = load_run_config(path, ["train.max_steps=4"])
    steps = {(s.stage, s.label): s for s in plan.plan(longer, stage_configs(longer))}
    vanilla = steps["train", "vanilla"]
    assert vanilla.status == "to run" and vanilla.seconds == pytest.approx(80.0)
    assert vanilla.basis.startswith("4 steps x 20.00 s/step, as vanilla-")
    assert steps["seed eval", "seed"].status == "cached" and steps["distill", "distill"].status == "cached"
    assert steps["eval", "vanilla"].status == "to run" and steps["eval", "vanilla"].basis.startswith("as vanilla-")
    text = plan.describe(longer, list(steps.values()))
    assert "~80 s (4 steps x 20.00 s/step, as vanilla-" in text and "2 stage(s) cached, 18 to run: about" in text


def test_the_dry_run_imports_no_model_library(tmp_path):
    """The acceptance check, as a user runs it: the plan is printed, and torch was never even imported."""
    code = ("import sys; from sdft.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; raise SystemExit(rc)")
    command = ["run", str(_config(tmp_path, backend=None)), "train.learning_rate=1e-4", "--dry-run"]
    done = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, cwd=ROOT,
                          check=False, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "dry run: nothing is run, no model is loaded" in done.stdout
    assert re.search(r"\n  train +vanilla +train/vanilla-[0-9a-f]{10} +to run +unknown", done.stdout)


def test_arm_seeds_train_an_arm_at_fewer_seeds_than_the_others(tmp_path, no_model):
    config = load_run_config(_config(tmp_path, arm_seeds={"sdft": [42], "interp": [43]}, mix_ratios=[0, 0.5, 1]))
    steps = plan.plan(config, stage_configs(config))
    trained = [s.label for s in steps if s.stage in ("train", "interp")]
    assert trained == ["vanilla", "mix0.5", "sdft", "vanilla-s43", "interp-a0.5-s43"]  # mix: sdft's sweep
    assert without_old_defaults("run config", to_dict(config))["arm_seeds"] == {"sdft": [42], "interp": [43]}
    plain = load_run_config(_config(tmp_path))  # a run without the key records none (its run.json as before)
    assert "arm_seeds" not in without_old_defaults("run config", to_dict(plain))


@pytest.mark.parametrize("arm_seeds, message", [
    ({"onpolicy": [42]}, "names arm 'onpolicy', which is not in 'arms'"),
    ({"vanilla": [42]}, "may not name vanilla"),
    ({"sdft": [44]}, "lists seed 44, which is not a training seed of the run"),
    ({"sdft": []}, "must list one or more integer seeds"),
    ({"sdft": [42, 42]}, "lists a seed more than once"),
])
def test_bad_arm_seeds_get_one_clear_line(tmp_path, arm_seeds, message):
    from sdft.base.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as caught:
        load_run_config(_config(tmp_path, arm_seeds=arm_seeds))
    assert "\n" not in str(caught.value)


def test_the_onpolicy_arm_trains_padded_in_a_padding_free_run(tmp_path, no_model):
    from sdft.experiment import targets

    config = load_run_config(_config(tmp_path, arms=["vanilla", "onpolicy"], interp={}, train_seeds=[42],
                                     train={"max_steps": 2, "padding_free": True}))
    train = stage_configs(config)["train"]
    built = {m.label: m.train for m in targets.models(config, train, "upstream", config.run_dir)}
    assert built["vanilla"].padding_free and built["vanilla"].objective == "sft"
    assert not built["onpolicy"].padding_free and built["onpolicy"].objective == "onpolicy"
