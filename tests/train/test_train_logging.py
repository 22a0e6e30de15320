"""What `sdft train` shows and leaves besides the weights, the way the HF stack does it: a tqdm progress bar,
`--report-to` trackers (TensorBoard, offline), and a Hugging Face model card beside the adapter and merged model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sdft.base.config import keyed_settings
from sdft.base.errors import ConfigError
from sdft.train.config import TrainConfig
from sdft.train.stage import train

QA = [("What is 2 + 3?", "The answer is 5."), ("Add 1 and 1.", "2"), ("Name a fruit.", "An apple."),
      ("Say hi.", "Hello!")]


def _config(model, data, out, **kw) -> TrainConfig:
    base = {"model": str(model), "data": str(data), "out": str(out), "max_steps": 3, "batch_size": 4,
            "grad_accum": 1, "learning_rate": 5e-2, "lr_scheduler": "constant", "max_length": 256,
            "save_steps": 100, "logging_steps": 100}
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"instruction": q, "input": "", "output": a} for q, a in QA * 2]))
    return path


def front_matter(path: Path) -> dict:
    """The card's metadata, read as the hub reads it (huggingface_hub's ModelCard)."""
    from huggingface_hub import ModelCard

    return ModelCard(path.read_text()).data.to_dict()


def test_tensorboard_event_files_and_model_cards_beside_adapter_and_merged_weights(tiny_model, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain = train(_config(tiny_model, data, tmp_path / "plain"))
    out = tmp_path / "logged"
    logged = train(_config(tiny_model, data, out, report_to="tensorboard", merge=True))
    assert [p["loss"] for p in logged["loss"]] == [p["loss"] for p in plain["loss"]]  # logging changes no number
    assert not (tmp_path / "plain" / "tensorboard").exists()
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event files under the output folder"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("train/loss")] == [1, 2, 3]

    adapter = front_matter(out / "README.md")
    assert adapter["library_name"] == "peft" and {"sdft", "vanilla", "lora"} <= set(adapter["tags"])
    assert adapter["datasets"] == ["qa.json"] and "base_model" not in adapter  # a local folder has no hub id
    text = (out / "README.md").read_text()
    assert logged["data"]["sha256"] in text and "learning rate 0.05" in text and "## Evaluation" not in text
    merged = front_matter(out / "merged" / "README.md")
    assert merged["library_name"] == "transformers" and "merged" in merged["tags"]


def test_report_to_is_not_keyed_and_needs_its_package(monkeypatch):
    base = TrainConfig(data="d.json", out="o")
    assert keyed_settings(base) == keyed_settings(TrainConfig(data="d.json", out="o", report_to="tensorboard"))
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else found(name, *a))
    with pytest.raises(ConfigError, match="--report-to wandb needs the wandb package: pip install wandb"):
        TrainConfig(data="d.json", out="o", report_to="wandb")


def test_training_args_pass_report_to_to_the_trainer():
    from sdft.train.setup import training_args

    assert training_args(TrainConfig(data="d", out="o"), 4, False, "fp32")["report_to"] == []
    args = training_args(TrainConfig(data="d", out="runs/x/train/vanilla-0123456789", report_to="tensorboard"), 4,
                         False, "fp32")
    assert args["report_to"] == ["tensorboard"] and args["run_name"] == "vanilla-0123456789"


class _Terminal:
    """A stream that says it is a terminal, kept for reading."""

    def __init__(self, tty: bool):
        self.text, self.tty = "", tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("stdout_tty", [True, False])
def test_a_progress_bar_on_a_terminal_and_lines_in_logs(monkeypatch, stdout_tty):
    """The bar (steps, loss, tokens/s, ETA) goes to stderr on a terminal; the progress lines stay where stdout is
    a log file, and only there when the bar is shown."""
    from sdft.train import output as train_output

    err, out = _Terminal(True), _Terminal(stdout_tty)
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr("sys.stdout", out)
    progress = train_output.progress_callback(every=2, total=4)
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    progress.on_train_begin(None, state, None)
    for step in (1, 2):
        state.global_step = step
        progress.on_step_end(None, state, None)
        progress.on_log(None, state, None, logs={"loss": 0.5, "learning_rate": 1e-4, "num_tokens": 4000.0 * step})
    bar = err.text.replace("\r", "\n").splitlines()[-1]
    assert bar.startswith("training:  50%") and "2/4" in bar and "<" in bar  # elapsed<remaining: the ETA
    assert "loss 0.5000" in bar and "tokens/s" in bar
    assert ("step 2/4  loss 0.5000" in out.text) is not stdout_tty
    progress.on_train_end(None, state, None)
