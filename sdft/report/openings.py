"""The report's "How answers open" section: the format of the training targets and of every model's answers.

Why it exists: on the Qwen seed's GSM8K experiment (docs/results/gsm8k-qwen/) 51 of the 92 accepted rewrites
opened with a numbered list though the seed's own answers never did (0 of 400); the SDFT model then opened
129 of 200 harmful requests with "1." and went on into the steps instead of refusing. A rewrite is the
seed's distribution under the *distillation* prompt, not under the task's, and the answer check of the
filter does not look at the format. This section shows that difference before anyone trusts the SDFT arm.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdft.base.openings import KINDS, PROSE, counts, opening, tally  # noqa: F401  (the classifier, shared with evaluate)

# A format is flagged when the accepted rewrites open with it this much more often (as a share) than the
# seed's own answers do on every task it answered: a difference of a few answers is not a drift.
FLAG_MARGIN = 0.2


def _cell(found: dict[str, int]) -> str:
    total = sum(found.values())
    if not total:
        return "–"
    shown = [(n, kind) for kind, n in found.items() if kind != PROSE and n]
    parts = [f"{kind} {n}/{total}" for n, kind in sorted(shown, reverse=True)]
    return ", ".join(parts) if parts else f"{PROSE} {total}/{total}"


def flagged(rewrites: dict[str, int], seed_answers: dict[str, dict[str, int]]) -> list[str]:
    """One line per format the accepted rewrites open with far more often than the seed's answers do."""
    total = sum(rewrites.values())
    answered = {task: found for task, found in seed_answers.items() if sum(found.values())}
    if not total or not answered:
        return []
    lines = []
    for kind in KINDS[:-1]:
        share = rewrites[kind] / total
        seed_shares = {task: found[kind] / sum(found.values()) for task, found in answered.items()}
        if share - max(seed_shares.values()) >= FLAG_MARGIN:
            seen = ", ".join(f"{task} {found[kind]}/{sum(found.values())}" for task, found in answered.items())
            lines.append(f"**Format check:** {rewrites[kind]} of {total} accepted rewrites open with a {kind}; "
                         f"the seed's own answers do so far less often ({seen}). The SDFT arm learns the "
                         f"rewrites' format with their content: compare its rows below with the seed's.")
    return lines


def copies_note(records: list[dict]) -> str:
    """How many accepted rewrites repeat their original answer word for word (whitespace aside).

    Why: where the seed copies the reference (a short function call, say: 91 of 98 on the Qwen seed's
    OpenFunctions run), SDFT trains on nearly vanilla's targets, and any difference between the two arms
    is training noise, not the method.
    """
    accepted = [r for r in records if r["accepted"]]
    same = sum(" ".join((r["rewrite"] or "").split()) == " ".join((r["original"] or "").split()) for r in accepted)
    if not same:
        return ""
    text = f"{same} of {len(accepted)} accepted rewrites repeat their original answer (whitespace aside)"
    if 2 * same < len(accepted):
        return text + "."
    return (f"**Copied targets:** {text}: the SDFT arm trains on nearly the same targets as vanilla, so a "
            f"difference between the two is mostly training noise, not the method.")


INTRO = ("How many answers start with a numbered list, a bulleted list, a code block or a heading (the rest: "
         "prose), over the distillation's targets and over each model's answers per task. Fine-tuning teaches "
         "the targets' format as well as their content.")


@dataclass
class Openings:
    """The section's content; ``sdft.report.stage`` renders it."""

    targets: list[list[str]]   # originals, accepted and rejected rewrites: [name, cell]
    notes: list[str]           # :func:`flagged` lines
    tasks: list[str]
    models: list[list[str]]    # [model label, one cell per task]


def _kind(record: dict) -> str:
    """An answer's opening: as classified when it was scored (per-item lines), else from its text."""
    return record["opening"] if record.get("opening") else opening(record.get("completion"))


def openings(records: list[dict], generations: dict) -> Openings | None:
    """Distillation targets (``records``: originals, rewrites) and every model's answers, by how they open;
    None if neither was saved."""
    # Generated answers only (they record their token count): a multiple-choice task's "completion" is the
    # option the model scored highest, not text it wrote.
    answers = {label: {task: tally(_kind(r) for r in rows) for task, (_, rows) in found.items()
                       if rows and all("completion_tokens" in r for r in rows)}
               for label, found in generations.items()}
    tasks = sorted({task for found in answers.values() for task in found})
    if not records and not tasks:
        return None
    targets, notes = [], []
    if records:
        rewrites = counts([r["rewrite"] for r in records if r["accepted"]])
        targets = [["original targets", _cell(counts([r["original"] for r in records]))],
                   ["accepted rewrites", _cell(rewrites)],
                   ["rejected rewrites", _cell(counts([r["rewrite"] for r in records if not r["accepted"]]))]]
        notes = [n for n in (copies_note(records), *flagged(rewrites, answers.get("seed", {}))) if n]
    models = [[label, *(_cell(found[task]) if task in found else "–" for task in tasks)]
              for label, found in answers.items() if found]
    return Openings(targets, notes, tasks, models)
