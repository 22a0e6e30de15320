"""`sdft run` with every arm on the tiny model: each trains, evaluates, is compared, and has its report rows."""

import json
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
    assert "## Training cost per arm" in report and "| onpolicy | onpolicy | 4 | 2 |" in report
    assert "| replay | replay | 4 + 2 replay | 2 |" in report
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
    assert [line for line in logs if line.startswith("[run ]")][0].startswith(f"[run ] {train_dir}")
    assert again.arms["onpolicy"].train.result["training"]["resumed_from"] == "checkpoint-1"
