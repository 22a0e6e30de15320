"""``sdft run``: the whole experiment from one config — seed vs vanilla vs SDFT, sweeps, report.

Stages, each a call to a stage function (never a subprocess):

1. evaluate the seed model;
2. distil the training set once with the seed model;
3. train at every (mix ratio, sample size) point — mix 0 is vanilla fine-tuning, mix 1 is SDFT — on the
   distilled file, so every point sees the same examples and only the targets differ;
4. evaluate each trained model, and compare it with the seed (text similarity of their answers, seed
   likelihood, parameter shift);
5. write the report.

Each stage's folder is named by a hash of everything it depends on (its settings and its inputs' keys).
A finished stage leaves ``stage.json``; a rerun skips it, a changed setting reruns only the stages that
depend on it, and an interrupted stage resumes inside its folder (every stage resumes on its own).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from sdft.config import field, from_dict, load_yaml, to_dict
from sdft.distill import DistillConfig, TaskKind
from sdft.errors import ConfigError
from sdft.store import write_json

# Keys the pipeline sets itself; a config section may not override them.
_OWNED = {"distill": {"model", "data", "out", "task", "shape", "columns"},
          "train": {"model", "data", "out", "mix_ratio", "limit", "task", "resume", "shape", "columns"},
          "eval": {"model", "adapter", "out"}}


@dataclass
class RunConfig:
    """One experiment. Sections ``distill``, ``train`` and ``eval`` take the keys of those stages' configs."""

    name: str = field(None, "experiment name; output goes to <out_root>/<name>/")
    data: str = field(None, "training dataset (file or hub name)")
    task: TaskKind = field("general", "task kind of the training data (picks templates and filter)")
    model: str = field("smollm2-135m-instruct", "seed model")
    shape: str = field("auto", "data shape")
    columns: list[str] = field(default_factory=list, help="column mapping, field=column")
    out_root: str = field("runs", "parent folder of the run")
    distill: dict = field(default_factory=dict, help="distillation settings (sdft distill keys)")
    train: dict = field(default_factory=dict, help="training settings (sdft train keys)")
    eval: dict = field(default_factory=dict, help="evaluation settings (sdft eval keys)")
    shift_tasks: list[str] = field(default_factory=list,
                                   help="eval tasks whose answers are compared with the seed's (default: all generative)")
    mix_ratios: list[float] = field(default_factory=lambda: [0.0, 1.0], help="share of rewrites used in training")
    sample_sizes: list[int] = field(default_factory=list, help="training-set sizes to sweep (at mix 0 and 1)")

    def validate(self) -> None:
        if not self.name or not self.data:
            raise ConfigError("a run config needs 'name' and 'data'")
        if any(not 0 <= r <= 1 for r in self.mix_ratios):
            raise ConfigError("'mix_ratios' must lie in [0, 1]")
        for section, owned in _OWNED.items():
            clash = owned & set(getattr(self, section))
            if clash:
                raise ConfigError(f"section '{section}' may not set {', '.join(sorted(clash))}: "
                                  "the pipeline sets them (use the top-level keys)")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_root) / self.name


@dataclass
class RunCommand:
    config: str = field(None, "experiment YAML file", positional=True)
    name: str | None = field(None, "override the config's name")
    out_root: str | None = field(None, "override the config's out_root")


def load_run_config(path: str | Path, **overrides) -> RunConfig:
    """Load and fully validate a run config, including every stage section, before any work starts."""
    data = load_yaml(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    config = from_dict(RunConfig, data, str(path))
    stage_configs(config)  # builds every stage config: unknown keys and bad types fail now
    return config


def stage_configs(config: RunConfig) -> dict:
    """The distill, train and eval configs this run will use (templates for each sweep point)."""
    from sdft.evaluate import EvalConfig
    from sdft.train import TrainConfig

    _check_data(config)
    distill = from_dict(DistillConfig, {**config.distill, "model": config.model,
                                        "data": config.data, "task": config.task, "shape": config.shape,
                                        "columns": config.columns, "out": "-"}, "distill section")
    # The distilled file keeps the user's record shape and column names, so training reads it the same way.
    train = from_dict(TrainConfig, {**config.train, "model": config.model, "data": "-", "out": "-",
                                    "task": config.task, "shape": config.shape, "columns": config.columns},
                      "train section")
    evaluation = from_dict(EvalConfig, {**config.eval, "model": config.model, "out": "-"}, "eval section")
    not_evaluated = sorted(set(config.shift_tasks) - set(evaluation.tasks))
    if not_evaluated:  # else the shift stage would fail after the first model is trained
        raise ConfigError(f"shift_tasks {', '.join(not_evaluated)} not among the eval section's tasks")
    for spec in evaluation.data:
        path = spec.partition("=")[2]
        if _looks_local(path) and not Path(path).exists():
            raise ConfigError(f"eval data file '{path}' (from '{spec}') not found")
    return {"distill": distill, "train": train, "eval": evaluation}


def _check_data(config: RunConfig) -> None:
    """Local training data is read and validated now, so bad records stop the run before any work."""
    from sdft.data import load_examples
    from sdft.distill import column_mapping

    path = Path(config.data)
    if path.exists():
        load_examples(config.data, shape=config.shape, columns=column_mapping(config.columns))
    elif _looks_local(config.data):
        raise ConfigError(f"data file '{config.data}' not found")


def _looks_local(name: str) -> bool:
    """A file path rather than a hub dataset name like ``org/name:split``."""
    path = Path(name)
    return bool(name) and (path.is_absolute() or name.startswith(".") or
                           path.suffix.lower() in {".json", ".jsonl", ".csv", ".tsv", ".parquet", ".gz"})


# Settings that change how a stage reports or checkpoints, never its result: left out of stage keys.
_NOT_KEYED = {"progress", "logging_steps", "save_steps", "save_total_limit", "keep_checkpoints", "resume",
              "overwrite"}


def _key(*parts) -> str:
    parts = tuple({k: v for k, v in p.items() if k not in _NOT_KEYED} if isinstance(p, dict) else p
                  for p in parts)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_stage(folder: Path, settings: dict, work: Callable[[Path], dict], log=print) -> dict:
    """Run ``work(folder)`` unless ``folder/stage.json`` says it finished with these settings."""
    marker = folder / "stage.json"
    if marker.is_file():
        log(f"[skip] {folder} (done)")
        return json.loads(marker.read_text())["result"]
    log(f"[run ] {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    result = work(folder)
    write_json(marker, {"settings": settings, "result": result})
    return result


def sweep_points(config: RunConfig) -> list[dict]:
    """(label, mix ratio, sample size) of every model to train; vanilla and SDFT always included."""
    points = {(r, None) for r in {0.0, 1.0, *config.mix_ratios}}
    points |= {(r, n) for n in config.sample_sizes for r in (0.0, 1.0)}
    labels = {0.0: "vanilla", 1.0: "sdft"}
    out = []
    for ratio, size in sorted(points, key=lambda p: (p[1] or 0, p[0])):
        label = labels.get(ratio, f"mix{ratio:g}") + (f"-n{size}" if size else "")
        out.append({"label": label, "mix_ratio": ratio, "sample_size": size})
    return out


def run(config: RunConfig, log=print) -> dict:
    """Run (or resume) the experiment; returns the manifest also saved as ``manifest.json``."""
    from sdft import report
    from sdft.distill import distill
    from sdft.evaluate import evaluate

    stages = stage_configs(config)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", to_dict(config))
    manifest: dict = {"name": config.name, "model": config.model, "data": config.data, "task": config.task,
                      "models": {}}

    def evaluate_model(label: str, adapter: str | None, upstream: str) -> dict:
        settings = to_dict(stages["eval"]) | {"adapter": adapter}
        folder = run_dir / "eval" / f"{label}-{_key(settings, upstream)}"
        result = run_stage(folder, settings, lambda f: evaluate(replace(
            stages["eval"], adapter=adapter, out=str(f))), log)
        return {"dir": str(folder), "results": result}

    seed_key = _key(config.model)
    manifest["models"]["seed"] = {"label": "seed", "eval": evaluate_model("seed", None, seed_key)}

    distill_settings = to_dict(stages["distill"])
    distill_dir = run_dir / "distill" / f"distill-{_key(distill_settings)}"
    manifest["distill"] = {"dir": str(distill_dir), "stats": run_stage(
        distill_dir, distill_settings,
        lambda f: distill(replace(stages["distill"], out=str(f))), log)}
    distilled = str(distill_dir / "distilled.jsonl")

    for point in sweep_points(config):
        settings = to_dict(stages["train"]) | {"mix_ratio": point["mix_ratio"], "limit": point["sample_size"]}
        folder = run_dir / "train" / f"{point['label']}-{_key(settings, distill_settings)}"
        train_result = run_stage(folder, settings, lambda f, p=point: _train(replace(
            stages["train"], data=distilled, out=str(f), mix_ratio=p["mix_ratio"], limit=p["sample_size"],
            resume=(f / "checkpoints").is_dir())), log)
        entry = {**point, "train": {"dir": str(folder), "result": train_result}}
        entry["eval"] = evaluate_model(point["label"], str(folder), str(folder))
        entry["shift"] = run_stage(Path(entry["eval"]["dir"]) / "shift", {"vs": "seed"},
                                   lambda f, e=entry: compare_with_seed(config, manifest, e, f), log)
        manifest["models"][point["label"]] = entry
    write_json(run_dir / "manifest.json", manifest)
    paths = report.write_report(run_dir)
    manifest["report"] = {k: str(v) for k, v in paths.items()}
    log(f"report: {paths['md']}\n        {paths['html']}")
    return manifest


def _train(config) -> dict:
    """Train, unless a crash came after training finished but before the stage was marked done."""
    from sdft.train import train

    finished = Path(config.out) / "train.json"
    if finished.is_file() and not (Path(config.out) / "checkpoints").is_dir():
        return json.loads(finished.read_text())
    return train(config)


def compare_with_seed(config: RunConfig, manifest: dict, entry: dict, folder: Path) -> dict:
    """Distribution shift of one trained model against the seed: text similarity, seed likelihood, weights."""
    from sdft import analyze
    from sdft.shift import ShiftConfig, parameter_shift

    seed_dir = manifest["models"]["seed"]["eval"]["dir"]
    result = analyze.analyze(analyze.AnalyzeConfig(
        what="shift", reference=seed_dir, candidate=entry["eval"]["dir"], out=str(folder),
        tasks=config.shift_tasks or None, model=config.model, adapter=entry["train"]["dir"]))
    shift = parameter_shift(ShiftConfig(model=config.model, adapter=entry["train"]["dir"],
                                        out=str(folder / "parameters")))
    return {"text": result, "parameters": shift}


def run_command(command: RunCommand) -> dict:
    if not command.config:
        raise ConfigError("usage: sdft run CONFIG.yaml")
    from sdft import provenance, runlock

    config = load_run_config(command.config, name=command.name, out_root=command.out_root)
    with runlock.claim(config.run_dir, provenance.command_line()):
        return run(config)


def summarize(manifest: dict) -> str:
    return f"done: {manifest['name']} — report at {manifest['report']['md']}"
