"""`sdft run` with every arm on the tiny model: each trains, evaluates, is compared, and has its report rows."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from sdft.base import layout
from sdft.base.errors import ConfigError
from sdft.experiment.pipeline import load_run_config, run

ARMS = ["vanilla", "sdft", "onpolicy", "replay", "interp", "sdft+replay"]


def _config(tmp_path: Path, tiny_model, **extra) -> Path:
    rows = [{"instruction": f"Call the weather tool for city number {i}.", "input": "",
             "output": f'weather.get(city="City{i}")'} for i in range(4)]
    data = tmp_path / "calls.json"
    data.write_text(json.dumps(rows))
    general = tmp_path / "general.jsonl"  # replay data in another shape and format than the task's
    general.write_text("".join(json.dumps({"question": f"Name a colour ({i}).", "answer": "Blue."}) + "\n"
                               for i in range(6)))
    config = {
        "name": "arms", "out_root": str(tmp_path / "runs"), "model": str(tiny_model), "data": str(data),
        "task": "function_call",
        "distill": {"max_new_tokens": 8, "batch_size": 4, "progress": False},
        "train": {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_length": 320, "learning_rate": 1e-3,
                  "save_steps": 1, "keep_checkpoints": True},
        "eval": {"tasks": ["openfunctions"], "limit": 2, "max_new_tokens": 8, "data": [f"openfunctions={data}"],
                 "progress": False},
        "arms": ARMS,
        "replay": {"data": str(general), "ratio": 0.5},
        "onpolicy": {"max_new_tokens": 8},
        "interp": {"alphas": [0.5]},
        **extra,
    }
    path = tmp_path / "arms.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_bad_arms_stop_the_run_before_any_work(tmp_path, tiny_model):
    with pytest.raises(ConfigError, match="unknown arm.*vanila"):
        load_run_config(_config(tmp_path, tiny_model, arms=["vanila"]))
    with pytest.raises(ConfigError, match="replay data file"):
        load_run_config(_config(tmp_path, tiny_model, replay={"data": str(tmp_path / "nope.json")}))
    with pytest.raises(ConfigError, match="may not set objective"):
        load_run_config(_config(tmp_path, tiny_model, train={"objective": "onpolicy"}))
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_every_arm_trains_evaluates_and_has_report_rows(tmp_path, tiny_model):
    config = load_run_config(_config(tmp_path, tiny_model))
    logs: list[str] = []
    manifest = run(config, log=logs.append)
    labels = ["seed", "vanilla", "sdft", "onpolicy", "replay", "sdft+replay", "interp-a0.5"]
    assert list(manifest.arms) == labels
    run_dir = tmp_path / "runs" / "arms"
    report = (run_dir / "report.md").read_text()
    for label in labels:
        assert f"| {label} |" in report  # results, shift and cost tables
    for label in labels[2:]:
        assert f"| {label} − vanilla | openfunctions/accuracy |" in report
    # The cost table: each model's own stages (the shared distillation is its own row), steps in the training cell.
    assert "## Cost per model" in report and "| distillation | shared by sdft, sdft+replay | – |" in report
    assert re.search(r"\| onpolicy \| onpolicy \| 4 \|  \| [0-9.]+ \(2 steps, ", report)
    assert re.search(r"\| replay \| replay \| 4 \+ 2 replay \|  \| [0-9.]+ \(2 steps, ", report)
    assert {"arms.png", "interp.png", "similarity.png"} <= {p.name for p in (run_dir / "plots").iterdir()}
    onpolicy = json.loads((Path(manifest.arms["onpolicy"].train.dir) / layout.TRAIN_RECORD).read_text())
    assert onpolicy["onpolicy"]["answers_sampled"] == 4 and onpolicy["training"]["objective"] == "onpolicy"

    # A rerun does no work; a run whose onpolicy training was cut off after a checkpoint resumes it.
    logs.clear()
    run(config, log=logs.append)
    assert not any(line.startswith("[run ]") for line in logs)
    train_dir = Path(manifest.arms["onpolicy"].train.dir)
    for name in (layout.STAGE, layout.TRAIN_RECORD, "adapter_model.safetensors"):
        (train_dir / name).unlink()
    shutil.rmtree(Path(manifest.arms["onpolicy"].eval.dir))
    shutil.rmtree(train_dir / layout.CHECKPOINTS / "checkpoint-2")  # killed after its first checkpoint
    logs.clear()
    again = run(config, log=logs.append)
    assert next(line for line in logs if line.startswith("[run ]")).startswith(f"[run ] {train_dir}")
    assert again.arms["onpolicy"].train.result["training"]["resumed_from"] == "checkpoint-1"


FORMAT_ARMS = {"arms": ["vanilla", "sdft", "sdft-guard", "self-answer"], "replay": {}, "onpolicy": {}, "interp": {},
               "guard": {"max_length_ratio": 3.0}}


def test_format_aware_arms_train_on_their_own_distillation(tmp_path, tiny_model, monkeypatch):
    """sdft-guard and self-answer distil the same examples again with their options and train on that file;
    the other arms read the run's distillation (the stages are test doubles: only what they get matters)."""
    from sdft.experiment import pipeline

    distilled, trained = {}, {}

    def distill(config):
        (Path(config.out) / layout.DISTILLED).write_text("")
        distilled[Path(config.out).name] = config
        stats = {"examples": 4, "accepted": 1, "acceptance_rate": 0.25, "reasons": {"accepted": 1, "no_call": 3}}
        if config.needs_self_answers:
            stats["self_answers"] = {"passed": 2, "reasons": {"accepted": 2, "no_call": 2}, "completion_tokens": 9,
                                     "generation_seconds": 0.5}
        if config.format_guard:
            stats.update(accepted=0, acceptance_rate=0.0, reasons={"no_call": 3, "format_mismatch": 1},
                         format_guard={"format_mismatch": 1, "length_mismatch": 0})
        if config.self_answer:
            stats["sources"] = {"self": 2, "rewrite": 1, "original": 1}
        return stats

    def train(config):
        trained[Path(config.out).name.rsplit("-", 1)[0]] = Path(config.data).parent.name
        return {"steps": 1}
    monkeypatch.setattr("sdft.distill.stage.distill", distill)
    monkeypatch.setattr("sdft.evaluate.stage.evaluate", lambda config: {"tasks": {}})
    monkeypatch.setattr(pipeline, "_train", train)
    monkeypatch.setattr(pipeline, "compare_with_seed", lambda *a: {"answer_shift": None, "weight_shift": None})
    config = load_run_config(_config(tmp_path, tiny_model, train={"max_steps": 2, "template": "alpaca"},
                                     **FORMAT_ARMS))
    manifest = run(config, log=lambda line: None)

    assert len(distilled) == 3
    main = Path(manifest.distill.dir).name
    guarded, = (name for name, c in distilled.items() if c.format_guard)
    own, = (name for name, c in distilled.items() if c.self_answer)
    assert not distilled[main].needs_self_answers
    assert (distilled[guarded].guard_max_length_ratio, distilled[guarded].self_answer) == (3.0, False)
    # The seed answers under the template its answers are trained under.
    assert distilled[guarded].answer_template == distilled[own].answer_template == "alpaca"
    assert trained == {"vanilla": main, "sdft": main, "sdft-guard": guarded, "self-answer": own}
    assert manifest.arms["sdft-guard"].recipe == "sdft-guard"
    assert Path(manifest.arms["sdft-guard"].params["distill"]).name == guarded
    assert manifest.arms["self-answer"].params["self_answer"] is True and "distill" not in manifest.arms["sdft"].params
    report = (config.run_dir / "report.md").read_text()
    assert "### The distillation of `sdft-guard`" in report and "### The distillation of `self-answer`" in report
    assert "**Format guard:** 1 rewrites" in report and "the seed's own answer 2, the accepted rewrite 1" in report
    assert "its own distillation (" in report  # the cost table

    logs: list[str] = []
    run(config, log=logs.append)  # a rerun does no work
    assert not any(line.startswith("[run ]") for line in logs)


def test_the_guard_section_belongs_to_the_sdft_guard_arm(tmp_path, tiny_model):
    with pytest.raises(ConfigError, match="section 'guard' is set but no arm uses it"):
        load_run_config(_config(tmp_path, tiny_model, **{**FORMAT_ARMS, "arms": ["vanilla", "self-answer"]}))
    with pytest.raises(ConfigError, match="sdft-guard.*guard_min_length_ratio"):
        load_run_config(_config(tmp_path, tiny_model, **{**FORMAT_ARMS, "guard": {"min_length_ratio": 2}}))
    with pytest.raises(ConfigError, match="unknown key.*colour"):
        load_run_config(_config(tmp_path, tiny_model, **{**FORMAT_ARMS, "guard": {"colour": 2}}))


@pytest.mark.slow
def test_format_aware_arms_end_to_end_on_the_tiny_model(tmp_path, tiny_model):
    train = {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_length": 320, "learning_rate": 1e-3,
             "batch_order": "index"}
    config = load_run_config(_config(tmp_path, tiny_model, train=train,
                                     **{**FORMAT_ARMS, "arms": ["vanilla", "sdft-guard", "self-answer"]}))
    manifest = run(config, log=lambda line: None)
    records = {label: json.loads((Path(manifest.arms[label].train.dir) / layout.TRAIN_RECORD).read_text())
               for label in ("vanilla", "sdft-guard", "self-answer")}
    for label in ("sdft-guard", "self-answer"):
        folder = layout.locate(config.run_dir, manifest.arms[label].params["distill"])
        assert len((folder / layout.DISTILL_SELF_ANSWERS).read_text().splitlines()) == 4
        assert records[label]["data"]["path"] == str(folder / layout.DISTILLED)
        # Every arm at the seed trains the same examples in the same micro-batches (train.batch_order index).
        assert records[label]["training"]["batch_order_sha256"] == records["vanilla"]["training"]["batch_order_sha256"]
    stats = {label: manifest.arms[label].params["distill"] for label in ("sdft-guard", "self-answer")}
    guarded = json.loads((layout.locate(config.run_dir, stats["sdft-guard"]) / layout.DISTILL_STATS).read_text())
    own = json.loads((layout.locate(config.run_dir, stats["self-answer"]) / layout.DISTILL_STATS).read_text())
    assert set(guarded["format_guard"]) == {"format_mismatch", "length_mismatch"}
    assert sum(own["sources"].values()) == 4
    report = (config.run_dir / "report.md").read_text()
    assert "### The distillation of `sdft-guard`" in report and "| self-answer − vanilla |" in report
