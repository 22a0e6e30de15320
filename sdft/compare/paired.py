"""``sdft analyze paired``: two evaluations of the same items, item by item, from their per-item files alone.

For two models on one suite, one model decoded two ways (a decoding probe: ``sdft eval --forbid-opening``
against the plain evaluation), or one model evaluated twice (another machine, another setting): per task, the
items the candidate scores higher and lower than the reference, the paired difference with its 95% interval
and the exact McNemar p (:func:`sdft.base.stats.paired_comparison`), how many answers are the very same text
(answer hashes) and how the answers open. Reads ``item_scores/TASK.jsonl`` and ``results.json`` only, never an
answer's text, so it works on archived evaluations (``sdft archive``) too.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sdft.base import layout
from sdft.base.errors import DataError, SdftError
from sdft.base.item_scores import by_id
from sdft.base.records import read_source
from sdft.base.stats import paired_comparison
from sdft.base.store import write_json
from sdft.compare.common import read_results, text_table
from sdft.compare.config import AnalyzeConfig

PAIRED = "paired.json"


def paired(config: AnalyzeConfig) -> dict:
    """Compare ``config.candidate`` with ``config.reference``; the dict also written to ``OUT/paired.json``."""
    folders = {role: _folder(path, role) for role, path in (("reference", config.reference),
                                                               ("candidate", config.candidate))}
    reference, candidate = folders["reference"], folders["candidate"]
    both = _tasks(reference) & _tasks(candidate)
    tasks = config.tasks or sorted(both)
    if not tasks:
        raise SdftError(f"{reference} and {candidate} have no task with per-item scores in common "
                        f"({', '.join(sorted(_tasks(reference))) or 'none'} vs "
                        f"{', '.join(sorted(_tasks(candidate))) or 'none'})")
    metrics = read_results(reference).get("tasks", {})
    result = {"analysis": "paired", "reference": str(reference), "candidate": str(candidate),
              "tasks": {task: _task(folders, task, metrics.get(task, {}).get("metric")) for task in tasks},
              "skipped_tasks": [] if config.tasks else sorted((_tasks(reference) | _tasks(candidate)) - both)}
    out = Path(config.out) if config.out else candidate / f"paired_vs_{reference.resolve().name}"
    write_json(out / PAIRED, result)
    return result | {"out": str(out)}


def _folder(path: str, role: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / layout.ITEM_SCORES).is_dir():
        raise SdftError(f"--{role} {folder} has no {layout.ITEM_SCORES}/ folder; give the --out folder of an "
                        "`sdft eval` run (evaluations made before per-item files existed: evaluate again)")
    return folder


def _tasks(folder: Path) -> set[str]:
    return {p.stem for p in (folder / layout.ITEM_SCORES).glob("*.jsonl")}


def _lines(folder: Path, task: str, role: str) -> list[dict]:
    path = layout.item_scores_file(folder, task)
    if not path.is_file():
        raise SdftError(f"--{role} {folder} has no per-item scores for task '{task}' ({path} not found)")
    label, rows = read_source(path)
    for where, line in rows:
        for key in ("id", "score"):
            if key not in line:
                raise DataError(label, "per-item line without it", field=key, **where)
    return [line for _, line in rows]


def _task(folders: dict[str, Path], task: str, metric: str | None) -> dict:
    lines = {role: _lines(folder, task, role) for role, folder in folders.items()}
    scores = {role: by_id(found) for role, found in lines.items()}  # an item's samples averaged
    for role, found in lines.items():
        if found and not scores[role]:
            raise SdftError(f"task '{task}': no item of --{role} {folders[role]} has a score")
    ref, cand = scores["reference"], scores["candidate"]
    ids = [i for i in ref if i in cand]
    if not ids:
        raise SdftError(f"task '{task}': the two evaluations share no item ids ({len(ref)} in "
                        f"{folders['reference']}, {len(cand)} in {folders['candidate']}); were they run on the "
                        "same data?")
    c = paired_comparison([cand[i] for i in ids], [ref[i] for i in ids])
    answers = {role: {(line["id"], line.get("sample", 0)): line for line in found if line["id"] in cand
                      and line["id"] in ref} for role, found in lines.items()}
    same = [_same(answers["reference"][key], answers["candidate"][key])
            for key in answers["reference"] if key in answers["candidate"]]
    known = [flag for flag in same if flag is not None]
    return {"metric": metric, "n": len(ids), "n_reference": len(ref), "n_candidate": len(cand),
            "reference": sum(ref[i] for i in ids) / len(ids), "candidate": sum(cand[i] for i in ids) / len(ids),
            "difference": c["mean"], "ci95": list(c["ci95"]), "better": c["wins"], "worse": c["losses"],
            "mcnemar_p": c["p"], "identical_answers": sum(known) if known else None, "compared_answers": len(known),
            "samples": max(len(answers["reference"]), len(answers["candidate"])) > len(ids),
            "openings": {role: dict(Counter(line["opening"] for line in found.values() if line.get("opening")))
                         for role, found in answers.items()},
            "better_ids": [i for i in ids if cand[i] > ref[i]], "worse_ids": [i for i in ids if cand[i] < ref[i]]}


def _same(reference: dict, candidate: dict) -> bool | None:
    """Whether two answers are the same text (answer hashes), or the same option picked (log-likelihood
    tasks); None where the lines do not say (written before answer hashes existed)."""
    for key in ("answer_hash", "choice"):
        if reference.get(key) is not None and candidate.get(key) is not None:
            return reference[key] == candidate[key]
    return None


def summarize(result: dict) -> str:
    """One line per task: both scores, the difference with its interval, items better / worse, McNemar p,
    identical answers and the commonest openings on each side."""
    rows = [("task", "items", "reference", "candidate", "difference [95%]", "better", "worse", "McNemar p",
             "same answer", "openings (reference -> candidate)")]
    for task, e in result["tasks"].items():
        low, high = e["ci95"]
        same = "–" if e["identical_answers"] is None else f"{e['identical_answers']}/{e['compared_answers']}"
        items = str(e["n"]) + ("" if e["n"] == e["n_reference"] == e["n_candidate"]
                               else f" (of {e['n_reference']} / {e['n_candidate']})")
        rows.append((f"{task}" + (f"/{e['metric']}" if e["metric"] else ""), items,
                     f"{100 * e['reference']:.1f}", f"{100 * e['candidate']:.1f}",
                     f"{100 * e['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]", str(e["better"]),
                     str(e["worse"]), "–" if e["mcnemar_p"] is None else f"{e['mcnemar_p']:.3g}", same,
                     f"{_openings(e['openings']['reference'])} -> {_openings(e['openings']['candidate'])}"))
    lines = text_table(rows)
    lines.append("scores in % (per item: the task's headline metric); difference = candidate - reference, paired "
                 "over the items both scored; one evaluation each: the interval covers the items, not training")
    if any(e["samples"] for e in result["tasks"].values()):
        lines.append("several samples per item: scores averaged per item; same answer and openings count every "
                     "sample")
    if result.get("skipped_tasks"):
        lines.append(f"tasks only one evaluation has (not compared): {', '.join(result['skipped_tasks'])}")
    if result.get("out"):
        lines.append(f"written: {Path(result['out']) / PAIRED} (the ids of the items better and worse too)")
    return "\n".join(lines)


def _openings(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in Counter(counts).most_common(2)) or "–"
