"""``sdft run``: the whole experiment from one config — seed vs vanilla vs SDFT, sweeps, report.

Stages, each a call to a stage function (never a subprocess):

1. evaluate the seed model;
2. distil the training set once with the seed model (and once more for each arm with a distillation of its
   own: ``sdft-guard``, ``self-answer``);
3. train at every (mix ratio, sample size) point — mix 0 is vanilla fine-tuning, mix 1 is SDFT — on the
   distilled file, so every point sees the same examples and only the targets differ; once per training
   seed (``train_seeds``; distillation and the seed's evaluation are shared);
4. evaluate each trained model, and compare it with the seed (text similarity of their answers, seed
   likelihood, parameter shift);
5. write the report.

Each stage's folder is named by its stage key (:func:`sdft.base.config.stage_key`: its keyed settings and its
inputs' keys), laid out by :mod:`sdft.base.layout`. A finished stage leaves ``stage.json`` with its result; a
rerun skips it, a changed setting reruns only the stages that depend on it, and an interrupted stage
resumes inside its folder (every stage resumes on its own).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from sdft.base import layout, provenance, runlock
from sdft.base.config import column_mapping, from_dict, keyed_settings, load_yaml, stage_key, to_dict
from sdft.base.data import load_examples
from sdft.base.errors import ConfigError
from sdft.base.keys import without_old_defaults
from sdft.base.layout import Arm, Manifest, StageRecord
from sdft.base.records import looks_local
from sdft.base.store import write_json
from sdft.compare import answers as analyze
from sdft.compare.config import AnalyzeConfig, ShiftConfig
from sdft.compare.weights import parameter_shift
from sdft.distill import stage as distill_stage
from sdft.distill.config import DistillConfig
from sdft.evaluate import stage as evaluate_stage
from sdft.evaluate.config import EvalConfig
from sdft.experiment import answer_reuse, archive, cpu_kind, overrides, plan
from sdft.experiment import arms as arm_list
from sdft.experiment.config import RunCommand, RunConfig
from sdft.experiment.targets import (  # noqa: F401  (some: names of this module before targets.py)
    KEY_LENGTH,
    Model,
    arm_distillations,
    compare_target,
    distill_key,
    distill_target,
    eval_stage_key,
    eval_target,
    models,
    shift_settings,
    stage_done,
    sweep_points,
)
from sdft.generation import release_engines
from sdft.models import card
from sdft.train import stage as train_stage
from sdft.train.config import TrainConfig
from sdft.train.interp import scale_adapter


def help_epilog() -> str:
    """``sdft run --help``: the keys of the YAML file, with the help of :class:`RunConfig`'s fields."""
    import dataclasses
    import textwrap

    lines = ["keys of the experiment YAML file (README: `sdft run`; sections take the stage's own keys):"]
    for f in dataclasses.fields(RunConfig):
        lines += textwrap.wrap(f"{f.name}: {f.metadata['help']}", 96, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


def _set_aside_for_narrowed_arms(data: dict, written: dict, settings: list[str]) -> None:
    """``arms=[...]`` on the command line runs part of a file's arms: the sections only the left-out arms read,
    and their ``arm_seeds``, are meant for a later run of the same file, so they are set aside (a section the
    file's own arms leave unused is still refused, and so is a setting given now for a section set aside)."""
    arms = data.get("arms") or []
    file_unused = set(arm_list.unused_sections(written.get("arms") or arm_list.DEFAULT_ARMS, written))
    for name in arm_list.unused_sections(arms, data):
        if name in file_unused:
            continue  # the file itself is wrong: RunConfig's check says so
        given = [item for item in settings if item.startswith(f"{name}.")]
        if given:
            raise ConfigError(f"override '{given[0]}' sets section '{name}', which no arm of arms={arms} reads")
        print(f"sdft run: section '{name}' is not used by arms={arms}: set aside for this run", file=sys.stderr)
        data.pop(name)
    # The file's seeds of a left-out arm likewise (seeds given now, or for an arm the file lacks, are judged).
    file_arms = written.get("arms") or arm_list.DEFAULT_ARMS
    file_seeds, given = (d.get("arm_seeds") if isinstance(d.get("arm_seeds"), dict) else {} for d in (written, data))
    left_out = [arm for arm, chosen in given.items()
                if arm not in arms and arm in file_arms and file_seeds.get(arm) == chosen]
    for arm in left_out:
        data["arm_seeds"] = {k: v for k, v in data["arm_seeds"].items() if k != arm}
        print(f"sdft run: arm_seeds.{arm} is not used by arms={arms}: set aside for this run", file=sys.stderr)


def load_run_config(path: str | Path, settings: list[str] = (), **flags) -> RunConfig:
    """Load and fully validate a run config, including every stage section, before any work starts:
    the file, then ``settings`` (``section.key=value`` overrides), then ``flags`` that are not None."""
    written = load_yaml(path)
    data = overrides.apply(written, list(settings))
    if any(item.startswith("arms=") for item in settings):
        _set_aside_for_narrowed_arms(data, written, settings)
    data.update({k: v for k, v in flags.items() if v is not None})
    config = from_dict(RunConfig, data, str(path))
    stage_configs(config)  # builds every stage config: unknown keys and bad types fail now
    return config


def stage_configs(config: RunConfig) -> dict:
    """The distill, train and eval configs this run will use (templates for each sweep point)."""
    _check_data(config)
    # One system text for all stages by default (the model must be trained and tested under the same one).
    system = {"system_prompt": config.system_prompt}
    distill = from_dict(DistillConfig, {**system, **config.distill, "model": config.model,
                                        "data": config.data, "task": config.task, "shape": config.shape,
                                        "columns": config.columns, "out": "-"}, "distill section")
    # The distilled file keeps the user's record shape and column names, so training reads it the same way.
    train = from_dict(TrainConfig, {**system, **config.train, "model": config.model, "data": "-", "out": "-",
                                    "task": config.task, "shape": config.shape, "columns": config.columns},
                      "train section")
    evaluation = from_dict(EvalConfig, {**system, **config.eval, "model": config.model, "out": "-"},
                           "eval section")
    from_dict(AnalyzeConfig, {**shift_settings(config), "reference": "-", "candidate": "-"}, "shift section")
    not_evaluated = sorted(set(config.shift_tasks) - set(evaluation.tasks))
    if not_evaluated:  # else the shift stage would fail after the first model is trained
        raise ConfigError(f"shift_tasks {', '.join(not_evaluated)} not among the eval section's tasks")
    for spec in evaluation.data:
        path = spec.partition("=")[2]
        if looks_local(path) and not Path(path).exists():
            raise ConfigError(f"eval data file '{path}' (from '{spec}') not found")
    replay_data = config.replay.get("data")
    if replay_data and looks_local(str(replay_data)) and not Path(replay_data).exists():
        raise ConfigError(f"replay data file '{replay_data}' not found")
    return {"distill": distill, "train": train, "eval": evaluation}


def _check_data(config: RunConfig) -> None:
    """Local training data is read and validated now, so bad records stop the run before any work."""
    path = Path(config.data)
    if path.exists():
        load_examples(config.data, shape=config.shape, columns=column_mapping(config.columns))
    elif looks_local(config.data):
        raise ConfigError(f"data file '{config.data}' not found")


def run_stage(folder: Path, key: str, settings: dict, work: Callable[[Path], dict], log=print, *,
              same_settings: bool = False) -> dict:
    """Run ``work(folder)`` unless ``folder`` holds a finished stage (its name carries its key). With
    ``same_settings`` (a folder whose name carries no key of its own: a model's ``compare``), a finished
    stage counts only when it was done with these ``settings``."""
    done = stage_done(folder, settings, same_settings)
    if done is not None:
        log(f"[skip] {folder} (done)")
        return done
    log(f"[run ] {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    began = time.time()
    result = work(folder)
    own = layout.read_stage(folder) or {}  # a stage that claims its folder recorded its own key
    layout.finish_stage(folder, own.get("key", key), settings, result, seconds=time.time() - began)
    return result


def run(config: RunConfig, log=print, *, mixed_cpu: bool = False) -> Manifest:
    """Run (or resume) the experiment; returns the manifest also saved as ``manifest.json``."""
    # here: the report's seed statistics import numpy and scipy, a second that `sdft run --help` need not wait
    from sdft.report import stage as report

    stages = stage_configs(config)
    run_dir = config.run_dir
    if any(s.status != "cached" and s.stage != "report" for s in plan.plan(config, stages)):
        cpu_kind.check(run_dir, mixed_cpu, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    # URLs (a section's judge or endpoint) without their query values and user info, as every run record.
    write_json(run_dir / layout.RUN_CONFIG,
               provenance.recordable(without_old_defaults("run config", to_dict(config))))
    manifest = Manifest(name=config.name, model=config.model, data=config.data, task=config.task,
                        system_prompt={name: c.system_prompt for name, c in stages.items()})
    manifest.arms["seed"] = Arm("seed", "seed", _evaluate(stages["eval"], run_dir, "seed", None,
                                                         stage_key(config.model), log))

    distill_config = stages["distill"]
    distilled_key, distill_dir = distill_target(distill_config, run_dir)
    own = arm_distillations(config, stages, run_dir)
    planned = list(models(config, stages["train"], distilled_key, run_dir, own))
    lacking = _resume_archived(config, stages["eval"], run_dir, manifest.seed, planned, log)
    if lacking.pending:
        _score_seed_answers(config, manifest.seed)
    manifest.distill = StageRecord(str(distill_dir), run_stage(
        distill_dir, distilled_key, keyed_settings(distill_config),
        lambda f: distill_stage.distill(replace(distill_config, out=str(f))), log))
    # The arms with a distillation of their own (sdft-guard, self-answer) get it now, while the engine is warm.
    for arm_config, key, folder in own.values():
        run_stage(folder, key, keyed_settings(arm_config),
                  lambda f, c=arm_config: distill_stage.distill(replace(c, out=str(f))), log)

    for model in planned:
        source = model.distilled or distill_dir
        why = lacking.rebuild.get(str(model.folder))
        archived = archive.clear_for_rebuild(model.folder, why, log) if why else None
        trained = StageRecord(str(model.folder), run_stage(
            model.folder, model.key, model.settings,
            lambda f, m=model, d=str(source / layout.DISTILLED): _build(m, f, d), log))
        if why:
            archive.record_rebuild(model.folder, why, archived)
        if str(model.folder) in lacking.reevaluate:
            _clear_evaluation(stages["eval"], run_dir, model, log)
        arm = Arm(model.label, model.recipe, _evaluate(stages["eval"], run_dir, model.label, trained.dir, model.key,
                                                       log), params=model.params, train=trained, seed=model.seed)
        key, compare_dir, shift = compare_target(manifest.seed.eval.dir, arm.eval.dir, config)
        compared = run_stage(compare_dir, key, shift, lambda f, a=arm: compare_with_seed(config, manifest.seed, a, f),
                             log, same_settings=True)
        arm.answer_shift, arm.weight_shift = compared["answer_shift"], compared["weight_shift"]
        # The model card beside the adapter (and merged/) now shows the results, next to the seed's.
        card.refresh(model.folder, label=arm.label, results=arm.eval.result, baseline=manifest.seed.eval.result)
        manifest.arms[arm.label] = arm
        # A report of the models done so far (a second or two): a run of hours can be read, and cut short.
        manifest.write(run_dir)
        report.write_report(run_dir)
        log(f"[report] {run_dir / layout.REPORT_MD} now has {arm.label}")
    manifest.write(run_dir)
    paths = report.write_report(run_dir)
    log(f"report: {paths['md']}\n        {paths['html']}")
    return manifest


def _resume_archived(config: RunConfig, template, run_dir: Path, seed: Arm, planned: list[Model],
                     log) -> archive.Missing:
    """What an archived run (``sdft archive``) lacks and its pending stages need. The seed's answers that
    comparisons read are generated again now; the models are built again in their turn (the run's loop)."""
    seed_eval = seed.eval.path(run_dir)
    lacking = archive.missing(config, template, run_dir, seed_eval, planned)
    if lacking.refill:
        seed_config = eval_target(template, run_dir, "seed", None, stage_key(config.model))[0]
        archive.refill_answers(seed_config, seed_eval, lacking.refill, evaluate_stage.evaluate, log)
    return lacking


def _clear_evaluation(template, run_dir: Path, model: Model, log) -> None:
    """A finished evaluation whose answers an archive left out, of a model whose comparison is pending: it
    runs again with the rebuilt weights (its archived results stay in the archive's history)."""
    folder = eval_target(template, run_dir, model.label, str(model.folder), model.key)[2]
    log(f"[redo] {folder}: its answers are not here (an archived run) and its comparison with the seed is pending")
    shutil.rmtree(folder)


def _build(model: Model, folder: Path, distilled: str) -> dict:
    """Train a training point, or scale vanilla's adapter for the interp arm (WiSE-FT)."""
    if model.train is not None:
        return _train(replace(model.train, data=distilled, out=str(folder)))
    return scale_adapter(model.source, folder, model.alpha)


def _evaluate(template, run_dir: Path, label: str, adapter: str | None, upstream: str, log) -> StageRecord:
    config, key, folder = eval_target(template, run_dir, label, adapter, upstream)

    def work(f: Path) -> dict:
        answer_reuse.start_from_siblings(f, config, log)
        return evaluate_stage.evaluate(replace(config, out=str(f)))
    return StageRecord(str(folder), run_stage(folder, key, keyed_settings(config), work, log))


def _train(config) -> dict:
    """Train (resuming from checkpoints when a crash left some), unless a crash came after training
    finished but before the stage was marked done."""
    release_engines()  # the engine that distilled or evaluated would sit on the memory and cores training needs
    out = Path(config.out)
    finished = out / layout.TRAIN_RECORD
    if finished.is_file() and not (out / layout.CHECKPOINTS).is_dir():
        if archive.has_weights(out):
            return json.loads(finished.read_text())
        # archived after train.json was written but before the stage was marked done: no weights to keep
        return train_stage.train(replace(config, overwrite=True))
    return train_stage.train(replace(config, resume=(out / layout.CHECKPOINTS).is_dir()))


def _score_seed_answers(config: RunConfig, seed: Arm) -> None:
    """With an engine scorer, the seed's answers are scored under the seed now, in the engine that has just
    evaluated it (every comparison's baseline), rather than in an engine started for it at the first comparison."""
    shift = shift_settings(config)
    if (shift.get("likelihood_backend") != "vllm" or not shift.get("likelihood", True)
            or not shift.get("baseline", True)):
        return
    analyze.score_baseline(AnalyzeConfig(**shift, reference=seed.eval.dir, candidate=seed.eval.dir,
                                         tasks=config.shift_tasks or None, model=config.model))


def compare_with_seed(config: RunConfig, seed: Arm, arm: Arm, folder: Path) -> dict:
    """How far one trained model moved from the seed: its answers (text similarity, seed likelihood) and
    its weights."""
    shift = shift_settings(config)
    if shift.get("likelihood_backend", "hf") == "hf":
        release_engines()  # scoring loads the model in torch beside it otherwise
    answers = analyze.analyze(analyze.AnalyzeConfig(
        **shift, what="shift", reference=seed.eval.dir, candidate=arm.eval.dir, out=str(folder),
        tasks=config.shift_tasks or None, model=config.model, adapter=arm.train.dir))
    weights = parameter_shift(ShiftConfig(model=config.model, adapter=arm.train.dir, out=str(folder)))
    return {"answer_shift": answers, "weight_shift": weights}


def run_command(command: RunCommand) -> dict:
    path, settings = command.file_and_overrides()
    config = load_run_config(path, settings, name=command.name, out_root=command.out_root)
    if command.dry_run:  # looks only: no lock, no folder, no model
        return {"plan": plan.describe(config, plan.plan(config, stage_configs(config)))}
    with runlock.claim(config.run_dir, provenance.command_line()):
        run(config, mixed_cpu=command.mixed_cpu)
    return {"name": config.name, "report": str(config.run_dir / layout.REPORT_MD)}


def summarize(result: dict) -> str:
    if "plan" in result:
        return result["plan"]
    return f"done: {result['name']} — report at {result['report']}"
