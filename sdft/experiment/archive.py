"""``sdft archive``: a run folder without its model weights or answer text, to commit, share, or resume on
another machine.

Left out: model weights (adapters, merged copies, checkpoints — hundreds of MB per model, rebuilt from the
config when a later stage needs them), the tokenizer saved beside each, and every evaluation's answer text
(``generations/``: AdvBench answers may be harmful; the per-item files beside ``results.json`` keep every
verdict, length, opening and answer hash). Everything else is copied — stage records, configs, results,
per-item scores, comparisons, the distilled training file, logs — so ``sdft stats`` and ``sdft report`` read
the archive alone, and ``sdft run`` resumes from it once it is copied to the run folder (:func:`missing`
says what must be made again; the run's loop makes it). What was left out is listed in ``archive.json``.
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
from sdft.base.store import append_json_entry, write_json
from sdft.experiment.config import RunConfig
from sdft.experiment.targets import compare_target, eval_target, stage_done
from sdft.tasks import answers_text

ARCHIVE_RECORD = "archive.json"  # at the archive's root: what was left out, and why
REFILL_RECORD = "refill.json"    # in a seed eval folder whose answers were generated again after an archive
REBUILD_RECORD = "rebuilt.json"  # in a model folder built again after an archive: its first build's result
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
_LEFT_OUT_FOLDERS = {layout.CHECKPOINTS: "training checkpoints (weights)", layout.MERGED: "merged model (weights)",
                     layout.GENERATIONS: "answer text (per-item verdicts are in item_scores/)"}
# Saved beside every adapter (11 MB for Qwen's tokenizer.json): the seed's own tokenizer, in every model folder.
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "chat_template.jinja"}
_NEVER = {runlock.LOCK_NAME}


@dataclass
class ArchiveConfig:
    run_dir: str = field(None, "run folder to archive", positional=True)
    # positional, not --out: every command's --out is locked (and so created) before the stage starts, while
    # an archive is made beside it and renamed into place
    dest: str = field(None, "archive folder (created; an earlier archive made there is replaced)", positional=True)


def archive(config: ArchiveConfig) -> dict:
    """Copy ``config.run_dir`` to ``config.out`` without weights or answer text; what was left out."""
    if not config.run_dir or not config.dest:
        raise ConfigError("sdft archive RUN_DIR DEST: both are needed")
    source, dest = Path(config.run_dir), Path(config.dest)
    if not (source / layout.RUN_CONFIG).is_file():
        raise ConfigError(f"{source} is not a run folder (no {layout.RUN_CONFIG}: made by `sdft run`)")
    if dest.resolve() == source.resolve() or source.resolve() in dest.resolve().parents:
        raise ConfigError(f"{dest}: give a folder outside the run folder {source}")
    _check_replaceable(dest)
    # No lock: a run still going may be archived (the point of archiving as stages finish). Every stage record
    # and result is written whole (a temporary file, then a rename), and a stage caught half-way has no
    # stage.json result, so it starts again from its beginning when resumed from the archive.
    left_out: dict[str, str] = {}
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    copied = _copy(source, staging, left_out)
    write_json(staging / ARCHIVE_RECORD, {**provenance.run_record({"run_dir": str(source), "dest": str(dest)}),
                                          "files": copied, "left_out": left_out})
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)  # a crash mid-copy leaves the earlier archive whole
    return {"out": str(dest), "files": copied, "left_out": len(left_out)}


def _check_replaceable(dest: Path) -> None:
    """``dest`` may replace only an earlier archive made there: never a run folder (one restored from an
    archive holds archive.json too), nor a folder of anything else."""
    if not dest.exists():
        return
    record = dest / ARCHIVE_RECORD
    try:
        made_for = Path(json.loads(record.read_text())["config"]["dest"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        made_for = None
    if made_for != dest.resolve():
        raise ConfigError(f"{dest} exists and is not an archive made there ({ARCHIVE_RECORD}): not replaced")
    live = [p for p in (runlock.LOCK_NAME, layout.MANIFEST + ".tmp") if (dest / p).exists()]
    folders = [p for p in dest.rglob("*") if p.is_dir()]
    if live or any(p.name == layout.GENERATIONS or has_weights(p) for p in folders):
        raise ConfigError(f"{dest} holds a run's answers, weights or lock: a run folder, not replaced")


def _copy(source: Path, dest: Path, left_out: dict[str, str], root: Path | None = None) -> int:
    """Copy what is there now; a file a running stage renames or removes meanwhile is passed over (its
    stage is not finished, or its finished file is copied under its final name)."""
    root = root or source
    dest.mkdir(parents=True, exist_ok=True)
    copied = 0
    try:
        entries = sorted(source.iterdir())
    except FileNotFoundError:
        return 0
    for entry in entries:
        where = str(entry.relative_to(root))
        if entry.name in _NEVER or entry.is_symlink() or entry.suffix == ".tmp":
            continue
        if entry.is_dir() and entry.name in _LEFT_OUT_FOLDERS:
            left_out[where + "/"] = _LEFT_OUT_FOLDERS[entry.name]
        elif entry.is_dir():
            copied += _copy(entry, dest / entry.name, left_out, root)
        elif entry.suffix in WEIGHT_SUFFIXES:
            left_out[where] = "weights"
        elif entry.name in TOKENIZER_FILES:
            left_out[where] = "tokenizer (saved again with the model's weights)"
        else:
            try:
                shutil.copy2(entry, dest / entry.name)
                copied += 1
            except FileNotFoundError:
                continue
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

    rebuild: dict[str, str]  # finished model folder whose weights are gone -> why it is built again
    reevaluate: set[str]     # model folders whose evaluation runs again (its answers gone, its comparison pending)
    refill: list[str]        # tasks whose seed answers are gone (the comparisons read them)
    pending: bool            # whether any model has a stage still to run


def missing(config: RunConfig, template, run_dir: Path, seed_eval: Path, planned: list) -> Missing:
    """What must be made again before the pending stages of ``planned`` (``targets.models``) can run:
    nothing unless the run folder was restored from an archive (it holds ``archive.json``); elsewhere a
    missing file is an error the stage that reads it reports. A model is whole or made again whole: one whose
    comparison is pending while its answers are gone is trained and evaluated again, so its results, answers,
    comparison and weights are of one model."""
    tasks = [t for t in (config.shift_tasks or template.tasks) if answers_text(t)]
    state = {str(m.folder): _model_state(config, template, run_dir, seed_eval, m, tasks) for m in planned}
    pending = any(s != "done" for s in state.values())
    if not (Path(run_dir) / ARCHIVE_RECORD).is_file():
        return Missing({}, set(), [], pending)
    reevaluate = {f for f, s in state.items() if s == "compare without answers"}
    why = {f: "its evaluation and comparison run again" if f in reevaluate else f"its {s} is pending"
           for f, s in state.items() if s != "done"}
    for m in planned:  # a pending interpolation scales its vanilla's weights
        if m.source and str(m.folder) in why:
            why.setdefault(m.source, f"{m.label} is built from it")
    rebuild = {str(m.folder): why[str(m.folder)] for m in planned if str(m.folder) in why
               and layout.finished_result(m.folder) is not None and not has_weights(m.folder)}
    refill = answers_missing(seed_eval, tasks) if pending and stage_done(seed_eval) else []
    return Missing(rebuild, reevaluate, refill, pending)


def _model_state(config: RunConfig, template, run_dir: Path, seed_eval: Path, model, tasks: list[str]) -> str:
    """done, evaluation (pending), comparison (pending), or compare without answers (pending, answers gone)."""
    _, _, eval_dir = eval_target(template, run_dir, model.label, str(model.folder), model.key)
    if stage_done(eval_dir) is None:
        return "evaluation"
    _, compare_dir, shift = compare_target(str(seed_eval), eval_dir, config)
    if stage_done(compare_dir, shift, same_settings=True) is not None:
        return "done"
    return "compare without answers" if answers_missing(eval_dir, tasks) else "comparison"


def answers_missing(eval_dir: Path, tasks: list[str]) -> list[str]:
    """The tasks among ``tasks`` whose answers an archived evaluation folder no longer holds."""
    return [t for t in tasks if not layout.generations_file(eval_dir, t).is_file()]


def clear_for_rebuild(folder: Path, why: str, log=print) -> dict | None:
    """Empty a finished model folder whose weights are gone, before it is built again; its archived result
    (returned) is kept beside the new one by :func:`record_rebuild`."""
    archived = layout.finished_result(folder)
    log(f"[redo] {folder}: its weights are not here (an archived run) and {why}")
    shutil.rmtree(folder)
    return archived


def record_rebuild(folder: Path, why: str, archived: dict | None) -> None:
    """``rebuilt.json``: why a model was built again, and the archived result of its first build (the weights
    of a rebuild at the same settings match the first only as closely as the machine's arithmetic does)."""
    write_json(Path(folder) / REBUILD_RECORD, {"why": why, "archived_result": archived,
                                               "rebuilt_result": layout.finished_result(folder)})


def refill_answers(eval_config, eval_dir: Path, tasks: list[str], evaluate: Callable, log=print) -> dict:
    """Generate again the answers of ``tasks`` that an archive left out of a finished evaluation (they are
    what later comparisons read), in a scratch folder inside it, then move them in. Answers and verdicts are
    checked against the archived per-item files (answer hashes, where they were recorded); differences are
    counted in ``refill.json`` (one entry per refill) and logged. The reported results stay the archived ones."""
    scratch = eval_dir / ".refill"
    log(f"[refill] {eval_dir}: answers of {', '.join(tasks)} (an archived run; a pending comparison reads them)")
    made = evaluate(replace(eval_config.only(tasks), out=str(scratch)))
    entry = {"tasks": {}, "generation": (made or {}).get("generation"), "provenance": (made or {}).get("provenance")}
    for task in tasks:
        entry["tasks"][task] = differences = _differences(eval_dir, scratch, task)
        if differences["answers_changed"] or differences["verdicts_changed"]:
            log(f"[refill] {task}: of {differences['items']} answers, {differences['answers_changed']} differ from "
                f"the archived ones ({differences['verdicts_changed']} verdicts); the comparisons read the new "
                f"answers, the reported results stay the archived ones ({REFILL_RECORD})")
        target = layout.generations_file(eval_dir, task)
        target.parent.mkdir(parents=True, exist_ok=True)
        layout.generations_file(scratch, task).replace(target)
    append_json_entry(eval_dir / REFILL_RECORD, "refills", entry)
    shutil.rmtree(scratch, ignore_errors=True)
    return entry


def _differences(archived: Path, fresh: Path, task: str) -> dict:
    def lines(folder: Path) -> dict:
        path = layout.item_scores_file(folder, task)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        return {str(r["id"]): r for r in rows}
    old, new = lines(archived), lines(fresh)
    hashed = all("answer_hash" in r for r in old.values()) and bool(old)
    return {"items": len(new),
            "verdicts_changed": sum(old.get(i, {}).get("score") != r.get("score") for i, r in new.items()),
            "answers_changed": sum(old.get(i, {}).get("answer_hash") != r.get("answer_hash") for i, r in new.items())
            if hashed else None}  # None: the archived per-item file records no answer hashes
