"""Per-item scores: one JSONL file per task beside an evaluation's ``results.json``
(:func:`sdft.base.layout.item_scores_file`), one line per item (per sample with ``--n-samples``), in item order.

Why a file of its own: paired statistics between models and over training seeds need every item's score,
and the generations files that held them also hold the answers (AdvBench answers can be harmful; sharing a
run's statistics must not mean sharing them). A line holds the item id, its score and what describes the
answer without quoting it:

* generated answers: ``verdict`` (the scorer's reason, only where the task says it is a label:
  ``GenerativeTask.verdict``), ``answer_tokens``, ``finish_reason`` (``length``: cut at the token budget) and
  ``opening`` (:func:`sdft.base.openings.opening`: numbered list, bulleted list, code block, heading, prose),
  ``answer_hash`` (whether an answer made again is the same one: :func:`answer_hash`; lines written before it
  existed lack it);
* log-likelihood tasks: ``choice``, the index of the option the model found most likely.

The evaluation stage writes it from the scored records of each task (``sdft.evaluate.run``); the report and
``sdft stats`` read it (:func:`by_id`), and read the generations file instead in eval folders made before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sdft.base.openings import opening


def generated(records: list[dict], verdict: Callable[[object], str | None]) -> list[dict]:
    """Lines for a generative (or judged) task's scored records, in their order; ``verdict``: the task's."""
    lines = []
    for rec in records:
        line = {"id": rec["id"], **({"sample": rec["sample"]} if "sample" in rec else {}), "score": rec["score"]}
        label = verdict(rec.get("reason")) if rec.get("reason") is not None else None
        if label is not None:
            line["verdict"] = label
        line.update({"answer_tokens": rec.get("completion_tokens"), "finish_reason": rec.get("finish_reason"),
                     "opening": opening(rec.get("completion")), "answer_hash": answer_hash(rec.get("completion"))})
        lines.append(line)
    return lines


def answer_hash(text: str | None) -> str:
    """The first 16 hex digits of the answer's SHA-256: whether two answers are the same, never what they say."""
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


def loglik(records: list[dict]) -> list[dict]:
    """Lines for a log-likelihood task's records: the option the model picked, never its text."""
    return [{"id": rec["id"], "score": rec["score"], "choice": rec.get("chosen")} for rec in records]


def as_answer_records(lines: list[dict]) -> list[dict]:
    """Per-item lines in the shape of generation records, for readers of answer lengths and openings (the
    report): a generated answer's ``completion_tokens``, ``finish_reason`` and ``opening``, never its text;
    a log-likelihood item's id and score alone."""
    return [{"id": line["id"], "score": line.get("score"),
             **({"completion_tokens": line["answer_tokens"], "finish_reason": line.get("finish_reason"),
                 "opening": line.get("opening")} if "answer_tokens" in line else {})} for line in lines]


def by_id(records: list[dict]) -> dict[str, float]:
    """``{item id: score}`` from per-item lines or generation records (either has ``id`` and ``score``),
    in first-seen order; an item's samples (``--n-samples``) averaged, so each item counts once."""
    sums: dict[str, list[float]] = {}
    for rec in records:
        if rec.get("score") is not None:
            sums.setdefault(rec["id"], []).append(float(rec["score"]))
    return {item: sum(scores) / len(scores) for item, scores in sums.items()}
