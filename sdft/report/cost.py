"""The report's cost tables: what each model cost end to end, per stage, from the records the run saved.

Arms differ in compute, not only in results: on-policy distillation samples an answer per example per
step, replay trains on more examples, SDFT pays for distillation once, interpolation costs seconds on top of
vanilla. A ranking of arms means little without this table beside it. Nothing is estimated: a stage whose
records hold no seconds shows "–".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sdft.base import layout, seeds
from sdft.base.layout import Arm, Manifest
from sdft.report.machine import machine_line

HEADER = ["model", "arm", "training examples", "distillation (s)", "seed replay answers (s)", "training (s)",
          "evaluation (s)", "comparison (s)", "total (s)", "tokens generated", "also"]
REPLAY_COLUMN = 4  # shown only in runs that made seed answers for replay


def _arm_name(arm: Arm) -> str:
    if arm.recipe != "mix":
        return arm.recipe
    return "vanilla" if not arm.mix_ratio else "sdft" if arm.mix_ratio == 1 else "mix"


def stage_seconds(folder: Path, fallback: float | None = None) -> float | None:
    """The wall time ``sdft run`` recorded in the stage's ``stage.json`` (the session that finished it), else
    ``fallback``: the stage's own timing record, for stages finished before stage.json kept the time."""
    seconds = (layout.read_stage(folder) or {}).get("seconds")
    return fallback if seconds is None else seconds


def _own_distillation(arm: Arm, run_dir: Path, main: Path | None) -> Path | None:
    """The folder of the distillation only this arm's models train on (sdft-guard, self-answer), if any."""
    stored = arm.params.get("distill")
    folder = layout.locate(run_dir, stored) if stored else None
    return None if folder is None or folder == main else folder


def _reads_shared(arm: Arm) -> bool:
    """Whether the model learns from the run's own rewrites (SDFT, mixtures, sdft+replay, ...)."""
    return bool(arm.mix_ratio) if arm.recipe == "mix" else arm.params.get("targets") == "rewrites"


def _distill_tokens(stats: dict) -> int | None:
    tokens = stats.get("completion_tokens")
    own = (stats.get("self_answers") or {}).get("completion_tokens")  # the seed's own answers: another pass
    return None if tokens is None else tokens + (own or 0)


def _eval_tokens(found: dict) -> int | None:
    """New tokens of a model's evaluation answers, from its generation records (None unless every generated
    answer says). Log-likelihood tasks generate nothing: their records (no completion) are not counted."""
    records = [r for _, task_records in found.values() for r in task_records if "completion" in r or "opening" in r]
    if not records or any("completion_tokens" not in r for r in records):
        return None
    return sum(r["completion_tokens"] for r in records)


def _eval_seconds(arm: Arm, run_dir: Path) -> float | None:
    tasks = [t.get("seconds") for t in arm.eval.result.get("tasks", {}).values() if isinstance(t, dict)]
    return stage_seconds(arm.eval.path(run_dir), sum(tasks) if tasks and None not in tasks else None)


@dataclass
class Part:
    """One stage of a model's row: its cell, the seconds it adds to the model's total (``owned``: [] when the
    model does not own it, [None] when no record holds them), its generated tokens and its notes."""

    cell: str = ""
    owned: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def _owned(seconds: float | None, **more) -> Part:  # a stage the model owns
    return Part(_s(seconds), [seconds], **more)


def _distill_part(arm: Arm, run_dir: Path, main: Path | None) -> Part:
    own = _own_distillation(arm, run_dir, main)
    if own is not None:
        stats = layout.finished_result(own) or {}
        return _owned(stage_seconds(own, stats.get("generation_seconds")),
                      tokens=[("distillation", _distill_tokens(stats))],
                      notes=[f"its own distillation ({own.name}), counted in each model trained on it"])
    return Part("shared" if _reads_shared(arm) else "")  # the run's distillation: its own row


def _train_part(arm: Arm, run_dir: Path) -> Part:
    """The training (or interpolation) stage."""
    result = arm.train.result or {}
    if arm.recipe == "interp":
        return _owned(stage_seconds(arm.train.path(run_dir), result.get("seconds")),
                      notes=[f"vanilla scaled by {arm.params.get('alpha')} (vanilla's training not repeated)"])
    training = result.get("training") or {}
    seconds, steps = stage_seconds(arm.train.path(run_dir), result.get("wall_time_s")), training.get("steps")
    part = _owned(seconds, tokens=[("training", (result.get("onpolicy") or {}).get("generated_tokens"))])
    if seconds and steps:
        part.cell += f" ({steps} steps, {seconds / steps:.2f} s/step)"
    if training.get("resumed_from"):
        part.notes.append(f"training resumed from {training['resumed_from']}: its last session's seconds")
    return part


def _examples(arm: Arm) -> str:
    if arm.recipe == "interp":
        return "–"
    data = (arm.train.result or {}).get("data") or {}
    examples = f"{data.get('task_examples', data.get('examples', '?'))}"
    return examples + (f" + {data['replay_examples']} replay" if data.get("replay_examples") else "")


def _replay_by_seed(arm: Arm) -> bool:
    data = ((arm.train.result if arm.train else None) or {}).get("data") or {}
    return (data.get("replay") or {}).get("source") == "seed"


def model_row(arm: Arm, run_dir: Path, main: Path | None, generations: dict) -> tuple[list[str], bool]:
    """One model's row, and whether a stage it owns has no recorded seconds."""
    evaluation = _owned(_eval_seconds(arm, run_dir), tokens=[("evaluation", _eval_tokens(generations))])
    if not arm.trained:  # the seed: its evaluation is every comparison's baseline
        return _row(arm.label, "seed", "–", [Part(), Part(), Part(), evaluation, Part()])
    return _row(arm.label, _arm_name(arm), _examples(arm),
                [_distill_part(arm, run_dir, main), Part("–" if _replay_by_seed(arm) else ""),
                 _train_part(arm, run_dir), evaluation, _owned(stage_seconds(arm.eval.path(run_dir) / layout.COMPARE))])


def shared_row(manifest: Manifest, run_dir: Path) -> tuple[list[str], bool]:
    """The run's distillation, once: every model that learns from its rewrites shares it (no model's total)."""
    stats, main = manifest.distill.result or {}, manifest.distill.path(run_dir)
    users = list(dict.fromkeys(seeds.group_name(a) for a in manifest.trained()
                               if _reads_shared(a) and _own_distillation(a, run_dir, main) is None))
    spent = stats.get("generation_seconds")  # summed over the progress records of every session
    distill = _owned(stage_seconds(main, spent), tokens=[("distillation", _distill_tokens(stats))],
                     notes=[f"generation alone {_s(spent)} s over all its sessions"] if spent is not None else [])
    return _row("distillation", "shared by " + (", ".join(users) or "no model's targets"), "–",
                [distill, Part(), Part(), Part(), Part()])


def _row(label: str, arm: str, examples: str, parts: list[Part]) -> tuple[list[str], bool]:
    owned = [s for p in parts for s in p.owned]
    return [label, arm, examples, *(p.cell for p in parts), _total(owned),
            _tokens([t for p in parts for t in p.tokens]), "; ".join(n for p in parts for n in p.notes)], None in owned


def cost_table(manifest: Manifest, run_dir: Path, generations: dict | None = None
               ) -> tuple[list[str], list[list[str]], str]:
    """The header, rows (the shared distillation, then every model) and the caption."""
    main = manifest.distill.path(run_dir) if manifest.distill else None
    built = [shared_row(manifest, run_dir)] if manifest.distill else []
    built += [model_row(arm, run_dir, main, (generations or {}).get(arm.label, {})) for arm in manifest.arms.values()]
    table = [HEADER, *(row for row, _ in built)]
    replay = any(row[REPLAY_COLUMN] for row in table[1:])
    if not replay:  # no model made seed answers for replay: no column for them
        table = [row[:REPLAY_COLUMN] + row[REPLAY_COLUMN + 1:] for row in table]
    return table[0], table[1:], caption(manifest, any(gap for _, gap in built), replay)


def caption(manifest: Manifest, missing: bool, replay: bool) -> str:
    text = ("Seconds per stage: the wall time `sdft run` recorded in the stage's stage.json, model loading "
            "included; a stage resumed over several sessions counts only the session that finished it (an "
            "evaluation that reused cached answers, only the rest). Stages finished before stage.json kept the "
            "time read their own record (train.json's wall time, the interpolation's seconds, the sum of the "
            "evaluation's task seconds, the distillation's generation seconds). The run's distillation is its "
            "own row, in no model's total (\"shared\": the model learns from its rewrites); a blank cell: a stage "
            "the model does not have. Tokens generated: the distillation's new tokens (with the seed's own "
            "answers), on-policy sampling while training, the model's evaluation answers.")
    if missing:
        text += " –: no record holds that stage's seconds; the total then adds the rest (≥)."
    if replay:
        text += (" Seed replay answers (–): no record keeps their seconds apart; they are inside the training "
                 "seconds of the model that generated them (later models read them from a cache).")
    return text + machine_line(manifest)


def task_seconds_table(manifest: Manifest) -> tuple[list[str], list[list[str]]] | None:
    """Evaluation seconds per task and model, where the results record them."""
    per_model = {label: {t: e.get("seconds") for t, e in arm.eval.result.get("tasks", {}).items()
                         if isinstance(e, dict) and e.get("seconds") is not None}
                 for label, arm in manifest.arms.items()}
    tasks = sorted({t for found in per_model.values() for t in found})
    if not tasks:
        return None
    return ["model", *tasks], [[label, *(_s(found.get(t)) for t in tasks)] for label, found in per_model.items()]


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.2f}"  # a stage of a tiny model is no "0.0"


def _total(parts: list[float | None]) -> str:
    known = [p for p in parts if p is not None]
    if not known:
        return "–"
    return ("≥ " if len(known) < len(parts) else "") + _s(sum(known))


def _tokens(parts: list[tuple[str, int | None]]) -> str:
    found = [f"{what} {n:,}" for what, n in parts if n]
    return "; ".join(found) if found else "–"
