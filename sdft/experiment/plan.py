"""``sdft run --dry-run``: every stage the run would go through, whether it is done, and what it may cost.

The plan walks the same stages, keys and folders as :func:`sdft.experiment.pipeline.run` (both read
:mod:`sdft.experiment.targets`), but only looks: a stage is *cached* when its folder holds a finished
``stage.json`` (for a comparison: one with the same settings), *to run* otherwise (*resumes* when its folder
already holds part of the work). No model, tokenizer or engine is loaded and nothing is written.

Estimates come from the stages already on disk in this run folder: a stage's own wall time (``seconds`` in
``stage.json``, recorded by ``sdft run`` since this plan exists; before that the timing fields of
``train.json``, ``results.json``, the distillation's and interpolation's records), first from a finished
stage of the same kind and model label (another key: an earlier setting), else the median over finished
stages of the same kind (training: of the same objective). A training estimate is scaled by the planned
steps when ``max_steps`` fixes them. "unknown" when nothing comparable has finished yet.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from sdft.base import layout
from sdft.base.config import stage_key
from sdft.experiment import archive
from sdft.experiment.config import RunConfig
from sdft.experiment.targets import arm_distillations, compare_target, distill_target, eval_target, models, stage_done


@dataclass
class Step:
    """One stage of the plan."""

    stage: str            # seed eval, distill, train, interp, eval, compare, report
    label: str
    folder: Path
    status: str           # cached, to run, resumes
    seconds: float | None = None  # cached: what it took; else the estimate
    basis: str = ""       # where the estimate comes from


@dataclass
class Done:
    """A finished stage on disk: what the estimates are made from."""

    kind: str
    label: str
    folder: Path
    seconds: float | None
    steps: int | None = None
    objective: str | None = None


def plan(config: RunConfig, stages: dict) -> list[Step]:
    """The run's stages in the order ``sdft run`` takes them (``stages``: ``pipeline.stage_configs``)."""
    run_dir = config.run_dir
    history = finished_stages(run_dir)
    steps: list[Step] = []

    def add(stage: str, label: str, folder: Path, done: dict | None, steps_planned=None, objective=None):
        steps.append(_step(stage, label, folder, done, history, steps_planned, objective))

    _, _, seed_eval = eval_target(stages["eval"], run_dir, "seed", None, stage_key(config.model))
    add("seed eval", "seed", seed_eval, stage_done(seed_eval))
    upstream, distill_dir = distill_target(stages["distill"], run_dir)
    add("distill", "distill", distill_dir, stage_done(distill_dir))
    own = arm_distillations(config, stages, run_dir)
    planned = list(models(config, stages["train"], upstream, run_dir, own))
    lacking = archive.missing(config, stages["eval"], run_dir, seed_eval, planned)
    if lacking.refill:  # an archived run: the seed's answers a pending comparison reads
        steps.append(Step("refill", "seed", seed_eval / layout.GENERATIONS, "to run", *_refill_estimate(
            seed_eval, lacking.refill)))
    for arm, (_, _, folder) in own.items():
        add("distill", arm, folder, stage_done(folder))
    for model in planned:
        why = lacking.rebuild.get(str(model.folder))
        done = None if why else stage_done(model.folder)
        if model.train is not None:
            add("train", model.label, model.folder, done, model.train.max_steps, model.train.objective)
        else:
            add("interp", model.label, model.folder, done)
        if why:
            steps[-1].status, steps[-1].basis = "rebuild", f"weights archived, {why}; {steps[-1].basis}"
        _, _, model_eval = eval_target(stages["eval"], run_dir, model.label, str(model.folder), model.key)
        again = str(model.folder) in lacking.reevaluate
        add("eval", model.label, model_eval, None if again else stage_done(model_eval))
        if again:
            steps[-1].status, steps[-1].basis = "rebuild", f"answers archived, comparison pending; {steps[-1].basis}"
        _, compare_dir, settings = compare_target(seed_eval, model_eval, config)
        add("compare", model.label, compare_dir, stage_done(compare_dir, settings, same_settings=True))
    steps.append(Step("report", "", run_dir / layout.REPORT_MD, "to run", None, "rewritten after every model"))
    return steps


def _refill_estimate(seed_eval: Path, tasks: list[str]) -> tuple[float | None, str]:
    """What generating the seed's answers of ``tasks`` again may take: what they took the first time."""
    timed = (layout.finished_result(seed_eval) or {}).get("tasks") or {}
    seconds = [(timed.get(t) or {}).get("seconds") for t in tasks]
    basis = f"answers of {', '.join(tasks)} archived"
    return (sum(seconds), f"{basis}; as they took") if None not in seconds else (None, basis)


def _step(stage: str, label: str, folder: Path, done: dict | None, history: list[Done], planned: int | None,
          objective: str | None) -> Step:
    kind = "eval" if stage == "seed eval" else stage
    if done is not None:
        own = next((d for d in history if d.folder == folder), None)
        return Step(stage, label, folder, "cached", own.seconds if own else None, "took")
    started = folder.is_dir() and any(folder.iterdir())
    seconds, basis = estimate(kind, label, folder, history, planned, objective)
    return Step(stage, label, folder, "resumes" if started else "to run", seconds, basis)


def estimate(kind: str, label: str, folder: Path, history: list[Done], planned: int | None = None,
             objective: str | None = None) -> tuple[float | None, str]:
    """``(seconds, basis)`` for a stage to run, from the finished stages in ``history``."""
    alike = [d for d in history if d.kind == kind and d.folder != folder and d.seconds is not None
             and (kind != "train" or d.objective in (None, objective))]
    if not alike:
        return None, "nothing comparable finished yet"
    same = [d for d in alike if d.label == label]
    if same:
        chosen = max(same, key=lambda d: _mtime(d.folder))
        basis = f"as {chosen.folder.name} took"
        pool = [chosen]
    else:
        pool, basis = alike, f"median of {len(alike)} finished {kind} stage(s)"
    if kind == "train" and planned:
        per_step = [d.seconds / d.steps for d in pool if d.steps]
        if per_step:
            rate = statistics.median(per_step)
            return rate * planned, f"{planned} steps x {rate:.2f} s/step, " + basis.replace(" took", "")
    return statistics.median(d.seconds for d in pool), basis


def finished_stages(run_dir: Path) -> list[Done]:
    """Every finished stage in the run folder, with its wall time where it was recorded."""
    found = []
    for kind, pattern in (("eval", "eval/*"), ("compare", "eval/*/compare"), ("distill", "distill/*"),
                          ("train", "train/*"), ("interp", "interp/*")):
        for folder in sorted(Path(run_dir).glob(pattern)):
            record = layout.read_stage(folder)
            if record and "result" in record:
                label = (folder.parent if kind == "compare" else folder).name.rsplit("-", 1)[0]
                found.append(_done(kind, label, folder, record))
    return found


def _done(kind: str, label: str, folder: Path, record: dict) -> Done:
    result = record.get("result") or {}
    seconds = record.get("seconds")
    if seconds is None:  # stages finished before stage.json kept the time: their own records
        seconds = {"train": result.get("wall_time_s"), "interp": result.get("seconds"),
                   "distill": result.get("generation_seconds")}.get(kind)
    if seconds is None and kind == "eval":
        tasks = [t.get("seconds") for t in (result.get("tasks") or {}).values() if isinstance(t, dict)]
        seconds = sum(tasks) if tasks and None not in tasks else None
    training = result.get("training") or {}
    objective = training.get("objective") or (record.get("settings") or {}).get("objective")
    return Done(kind, label, folder, seconds, training.get("steps"), objective)


def _mtime(folder: Path) -> float:
    try:
        return (folder / layout.STAGE).stat().st_mtime
    except OSError:
        return 0.0


def describe(config: RunConfig, steps: list[Step]) -> str:
    """The plan as ``sdft run --dry-run`` prints it."""
    run_dir = config.run_dir
    rows = [("stage", "model", "folder", "status", "time")]
    for s in steps:
        where = s.folder.relative_to(run_dir) if s.folder.is_relative_to(run_dir) else s.folder
        time = (f"took {duration(s.seconds)}" if s.status == "cached" and s.seconds is not None
                else "done" if s.status == "cached"
                else f"~{duration(s.seconds)} ({s.basis})" if s.seconds is not None else f"unknown ({s.basis})")
        rows.append((s.stage, s.label, str(where), s.status, time))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"sdft run {config.name}: plan in {run_dir} (dry run: nothing is run, no model is loaded)"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    todo = [s for s in steps if s.status != "cached" and s.stage != "report"]
    known = [s.seconds for s in todo if s.seconds is not None]
    cached = sum(s.status == "cached" for s in steps)
    lines.append(f"{cached} stage(s) cached, {len(todo)} to run"
                 + (f": about {duration(sum(known))} for {len(known)} of them" if known else "")
                 + (f", {len(todo) - len(known)} without an estimate" if len(known) < len(todo) else ""))
    return "\n".join(lines)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
