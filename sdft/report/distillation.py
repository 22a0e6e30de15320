"""The report's "Distillation" section: acceptance and reasons, example rewrites, and for format-aware
distillations (``sdft distill --format-guard`` / ``--self-answer``) how often the seed's own answers passed, what
the guard rejected and where the training targets came from; for the run's distillation and for each arm
that had its own (``sdft-guard``, ``self-answer``: their manifest params name the folder)."""

from __future__ import annotations

from pathlib import Path

from sdft.base import layout, seeds
from sdft.base.layout import Manifest
from sdft.base.store import read_jsonl
from sdft.report.tables import table

_SOURCES = {"self": "the seed's own answer", "rewrite": "the accepted rewrite", "original": "the original"}


def distilled_records(manifest: Manifest, run_dir: Path) -> list[dict]:
    """The distillation's per-example records (original, rewrite, verdict); [] if the run distilled nothing."""
    if manifest.distill is None:
        return []
    path = manifest.distill.path(run_dir) / layout.DISTILLED
    return [r["sdft"] for r in read_jsonl(path)] if path.is_file() else []


def distill_section(manifest: Manifest, records: list[dict], run_dir: Path | None = None, n_examples: int = 2) -> str:
    if manifest.distill is None:
        return ""
    text = "## Distillation\n\n" + _summary(manifest.distill.result)
    for accepted in (True, False):
        picked = [r for r in records if r["accepted"] == accepted][:n_examples]
        title = "Accepted" if accepted else "Rejected"
        for p in picked:
            text += (f"\n**{title} rewrite** (`{p['id']}`, reason: {p['reason']})\n\n"
                     f"- original: {_clip(p['original'])}\n- rewrite: {_clip(p['rewrite'])}\n")
    for names, stats in arm_distillations(manifest, run_dir) if run_dir is not None else []:
        text += (f"\n### The distillation of {names}\n\nThe same examples, distilled again for this arm. "
                 + _summary(stats))
    return text


def _summary(stats: dict) -> str:
    reasons = table(["reason", "count"], [[k, v] for k, v in stats["reasons"].items()])
    text = (f"{stats['examples']} examples, {stats['accepted']} rewrites accepted "
            f"({stats['acceptance_rate']:.0%}); {stats.get('completion_tokens', '?')} new tokens at "
            f"{stats.get('tokens_per_second', '?')} tokens/s; {stats.get('prompts_truncated', 0)} prompts "
            f"truncated.\n\n{reasons}\n")
    return text + "".join(f"\n{line}\n" for line in mode_lines(stats))


def mode_lines(stats: dict) -> list[str]:
    """The format-aware counts of one distillation's stats (none for a distillation without them)."""
    lines = []
    own = stats.get("self_answers")
    if own:
        failed = ", ".join(f"{k} {v}" for k, v in own["reasons"].items() if k != "accepted")
        lines.append(f"**The seed's own answers** (the task's prompt, one more pass of {own['completion_tokens']} new "
                     f"tokens): {own['passed']} of {stats['examples']} pass the filter"
                     + (f" (the others: {failed})." if failed else "."))
    guard = stats.get("format_guard")
    if guard:
        lines.append(f"**Format guard:** {guard['format_mismatch']} rewrites the filter accepted were rejected for "
                     f"opening unlike the seed's own answer (`format_mismatch`), {guard['length_mismatch']} for "
                     "their length (`length_mismatch`); rejected rewrites leave the original as the target.")
    sources = stats.get("sources")
    if sources:
        lines.append("**Training targets** (self-answer): " +
                     ", ".join(f"{_SOURCES[k]} {v}" for k, v in sources.items()) + ".")
    return lines


def arm_distillations(manifest: Manifest, run_dir: Path) -> list[tuple[str, dict]]:
    """``(arm names, stats)`` of each finished distillation an arm had of its own, other than the run's."""
    main = manifest.distill.path(run_dir) if manifest.distill else None
    found: dict[Path, list[str]] = {}
    for arm in manifest.arms.values():
        if arm.params.get("distill"):
            names = found.setdefault(layout.locate(run_dir, arm.params["distill"]), [])
            if seeds.group_name(arm) not in names:
                names.append(seeds.group_name(arm))
    out = []
    for folder, names in found.items():
        stats = layout.finished_result(folder)
        if folder != main and stats:  # an arm that shares the run's distillation is shown above
            out.append((", ".join(f"`{n}`" for n in names), stats))
    return out


def _clip(text: str | None, limit: int = 300) -> str:
    text = (text or "").replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[:limit] + " …"
