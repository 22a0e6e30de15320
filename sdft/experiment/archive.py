"""``sdft archive``: a run folder without its model weights or answer text, to commit, share, or resume on
another machine.

Left out: model weights (adapters, merged copies, checkpoints — hundreds of MB per model, rebuilt from the
config when a later stage needs them) and every evaluation's answer text (``generations/``: AdvBench answers
may be harmful; the per-item files beside ``results.json`` keep every verdict). Everything else is copied —
stage records, configs, results, per-item scores, comparisons, the distilled training file, logs — so
``sdft stats`` and ``sdft report`` read the archive alone, and ``sdft run`` resumes from it once it is copied
to the run folder: finished stages are skipped; a model whose weights a pending stage needs is built again
(:func:`weights_to_rebuild`); the seed's answers a pending comparison reads are generated again and checked
against the archived verdicts (:func:`refill_answers`). What was left out is listed in ``archive.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from sdft.base import layout, provenance, runlock
from sdft.base.config import field
from sdft.base.errors import ConfigError
from sdft.base.store import write_json
from sdft.experiment.config import RunConfig
from sdft.experiment.targets import compare_target, eval_target, stage_done
from sdft.tasks import answers_text

ARCHIVE_RECORD = "archive.json"  # at the archive's root: what was left out, and why
REFILL_RECORD = "refill.json"    # in a seed eval folder whose answers were generated again after an archive
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
_LEFT_OUT_FOLDERS = {layout.CHECKPOINTS: "training checkpoints (weights)", layout.MERGED: "merged model (weights)",
                     layout.GENERATIONS: "answer text (per-item verdicts are in item_scores/)"}
_NEVER = {runlock.LOCK_NAME}


@dataclass
class ArchiveConfig:
    run_dir: str = field(None, "run folder to archive", positional=True)
    out: str = field(None, "archive folder (created; an earlier archive of the same run there is replaced)")


def archive(config: ArchiveConfig) -> dict:
    """Copy ``config.run_dir`` to ``config.out`` without weights or answer text; what was left out."""
    if not config.run_dir or not config.out:
        raise ConfigError("sdft archive RUN_DIR --out FOLDER: both are needed")
    source, dest = Path(config.run_dir), Path(config.out)
    if not (source / layout.RUN_CONFIG).is_file():
        raise ConfigError(f"{source} is not a run folder (no {layout.RUN_CONFIG}: made by `sdft run`)")
    if dest.resolve() == source.resolve() or source.resolve() in dest.resolve().parents:
        raise ConfigError(f"--out {dest}: give a folder outside the run folder {source}")
    if dest.exists() and not (dest / ARCHIVE_RECORD).is_file():
        raise ConfigError(f"--out {dest} exists and is not an archive ({ARCHIVE_RECORD} missing): not replaced")
    # No lock: a run still going may be archived (the point of archiving as stages finish). Every stage record
    # and result is written whole (a temporary file, then a rename), and a stage caught half-way has no
    # stage.json result, so it starts again from its beginning when resumed from the archive.
    left_out: dict[str, str] = {}
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    copied = _copy(source, staging, left_out)
    write_json(staging / ARCHIVE_RECORD, {**provenance.run_record({"run_dir": str(source), "out": str(dest)}),
                                          "files": copied, "left_out": left_out})
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)  # a crash mid-copy leaves the earlier archive whole
    return {"out": str(dest), "files": copied, "left_out": len(left_out)}


def _copy(source: Path, dest: Path, left_out: dict[str, str], root: Path | None = None) -> int:
    root = root or source
    dest.mkdir(parents=True, exist_ok=True)
    copied = 0
    for entry in sorted(source.iterdir()):
        where = str(entry.relative_to(root))
        if entry.name in _NEVER or entry.is_symlink():
            continue
        if entry.is_dir() and entry.name in _LEFT_OUT_FOLDERS:
            left_out[where + "/"] = _LEFT_OUT_FOLDERS[entry.name]
        elif entry.is_dir():
            copied += _copy(entry, dest / entry.name, left_out, root)
        elif entry.suffix in WEIGHT_SUFFIXES:
            left_out[where] = "weights"
        else:
            shutil.copy2(entry, dest / entry.name)
            copied += 1
    return copied


def summarize(result: dict) -> str:
    return f"archived {result['files']} files to {result['out']} ({result['left_out']} left out: see {ARCHIVE_RECORD})"


# ------------------------------------------------------------------ resuming from an archive

def has_weights(folder: Path) -> bool:
    """Whether a model folder (a training or an interpolation) holds its weights."""
    return any(p.suffix in WEIGHT_SUFFIXES for p in Path(folder).glob("*"))


@dataclass
class Missing:
    """What an archived run lacks that its pending stages read."""

    rebuild: list      # finished models (``targets.Model``) whose weights are gone
    refill: list[str]  # tasks whose seed answers are gone
    pending: bool      # whether any model has a stage still to run


def missing(config: RunConfig, template, run_dir: Path, seed_eval: Path, planned: list) -> Missing:
    """What must be made again before the pending stages of ``planned`` (``targets.models``) can run:
    nothing unless the run folder was restored from an archive (it holds ``archive.json``); elsewhere a
    missing file is an error the stage that reads it reports."""
    pending = {str(m.folder) for m in planned if not model_done(config, template, run_dir, seed_eval, m)}
    if not (Path(run_dir) / ARCHIVE_RECORD).is_file():
        return Missing([], [], bool(pending))
    tasks = [t for t in (config.shift_tasks or template.tasks) if answers_text(t)]
    return Missing(weights_to_rebuild(planned, lambda m: str(m.folder) in pending),
                   answers_missing(seed_eval, tasks) if pending and stage_done(seed_eval) else [], bool(pending))


def model_done(config: RunConfig, template, run_dir: Path, seed_eval: Path, model) -> bool:
    """Whether a model's evaluation and its comparison with the seed are both finished."""
    _, _, eval_dir = eval_target(template, run_dir, model.label, str(model.folder), model.key)
    _, compare_dir, shift = compare_target(str(seed_eval), eval_dir, config)
    return stage_done(eval_dir) is not None and stage_done(compare_dir, shift, same_settings=True) is not None


def weights_to_rebuild(models: list, pending: Callable[[object], bool]) -> list:
    """The finished models whose weights are gone (an archived run) while a pending stage needs them: a model
    whose own evaluation or comparison is pending, and the vanilla model a pending interpolation scales."""
    needed = {str(m.folder) for m in models if pending(m)}
    needed |= {m.source for m in models if m.source and str(m.folder) in needed}
    return [m for m in models if str(m.folder) in needed and layout.finished_result(m.folder) is not None
            and not has_weights(m.folder)]


def answers_missing(eval_dir: Path, tasks: list[str]) -> list[str]:
    """The tasks among ``tasks`` whose answers an archived evaluation folder no longer holds."""
    return [t for t in tasks if not layout.generations_file(eval_dir, t).is_file()]


def refill_answers(eval_config, eval_dir: Path, tasks: list[str], evaluate: Callable, log=print) -> dict:
    """Generate again the answers of ``tasks`` that an archive left out of a finished evaluation (they are
    what later comparisons read), in a scratch folder inside it, then move them in. The verdicts are checked
    against the archived per-item files: their differences, if any, are counted in ``refill.json`` and
    logged; the archived results stay the reported ones."""
    scratch = eval_dir / ".refill"
    log(f"[refill] {eval_dir}: answers of {', '.join(tasks)} (an archived run; a pending comparison reads them)")
    evaluate(replace(eval_config.only(tasks), out=str(scratch)))
    made = scratch / layout.RUN_RECORD  # how the new answers were made (backend, precision, CPU's bf16 units)
    record = {"tasks": {}, "run": json.loads(made.read_text()) if made.is_file() else None}
    for task in tasks:
        changed, items = _verdicts_changed(eval_dir, scratch, task)
        record["tasks"][task] = {"items": items, "verdicts_changed": changed}
        if changed:
            log(f"[refill] {task}: {changed} of {items} verdicts differ from the archived ones; the comparisons "
                f"read the new answers, the reported results stay the archived ones ({REFILL_RECORD})")
        target = layout.generations_file(eval_dir, task)
        target.parent.mkdir(parents=True, exist_ok=True)
        layout.generations_file(scratch, task).replace(target)
    write_json(eval_dir / REFILL_RECORD, record)
    shutil.rmtree(scratch, ignore_errors=True)
    return record


def _verdicts_changed(archived: Path, fresh: Path, task: str) -> tuple[int, int]:
    def verdicts(folder: Path) -> dict:
        path = layout.item_scores_file(folder, task)
        if not path.is_file():
            return {}
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {str(r["id"]): r.get("score") for r in rows}
    old, new = verdicts(archived), verdicts(fresh)
    return sum(old.get(i) != v for i, v in new.items()) + len(old.keys() - new.keys()), len(new)
