"""What the answer comparison and the seed likelihood share: reading two evaluation folders (matched by task and
item id, refused when their prompts differ) and the summary of a metric's per-item values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple, Sequence

from sdft.base import layout
from sdft.base.errors import DataError, SdftError
from sdft.base.stats import mean_interval
from sdft.base.store import read_jsonl
from sdft.tasks import answers_text

_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


# ------------------------------------------------------------------ distributions

def distribution(values: Sequence[float], *, bounds: tuple[float, float] | None = None,
                 bins: int = 20) -> dict:
    """Mean, 95% interval, spread, quantiles, a histogram and the values themselves (NaN left out)."""
    import numpy as np

    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    out: dict = {"n": len(finite), "values": [None if v is None or not math.isfinite(v) else float(v)
                                               for v in values]}
    if not finite:
        return out | {"mean": None}
    mean, low, high = mean_interval(finite)
    if bounds:  # the normal interval can spill past what the metric can take
        low, high = max(bounds[0], low), min(bounds[1], high)
    arr = np.asarray(finite)
    counts, edges = np.histogram(arr, bins=bins, range=bounds)
    return out | {
        "mean": mean, "ci95": [low, high], "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "quantiles": {f"p{round(q * 100)}": float(np.quantile(arr, q)) for q in _QUANTILES},
        "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]},
    }


# ------------------------------------------------------------------ reading evaluations

def eval_dir(path: str, role: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / layout.GENERATIONS).is_dir():
        raise SdftError(f"--{role} {folder} is not an eval folder (no generations/ in it); "
                        f"give the --out folder of an `sdft eval` run")
    return folder


def read_results(folder: Path) -> dict:
    path = folder / layout.RESULTS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg})", line=exc.lineno) from None


def read_records(folder: Path, task: str) -> dict[str, dict]:
    """A task's generation records by id (a sampled eval's extra samples are left out: first one kept)."""
    path = layout.generations_file(folder, task)
    if not path.is_file():
        raise SdftError(f"{folder} has no generations for task '{task}' ({path} not found)")
    by_id: dict[str, dict] = {}
    for i, rec in enumerate(read_jsonl(path), 1):
        for key in ("id", "prompt"):
            if key not in rec:
                raise DataError(path, f"record has no '{key}'", line=i, field=key)
        by_id.setdefault(str(rec["id"]), rec)
    return by_id


def choose_tasks(reference: Path, candidate: Path, wanted: list[str] | None) -> tuple[list[str], list[str]]:
    """(tasks to compare, tasks skipped because their records are picked options, not answers)."""
    if wanted:
        return list(dict.fromkeys(wanted)), []
    ref, cand = ({p.stem for p in (d / layout.GENERATIONS).glob("*.jsonl")} for d in (reference, candidate))
    common = sorted(ref & cand)
    tasks = [t for t in common if answers_text(t)]
    if not tasks:
        raise SdftError(f"{reference} and {candidate} have no generative task in common "
                        f"(tasks with generations: {', '.join(sorted(ref)) or 'none'} vs "
                        f"{', '.join(sorted(cand)) or 'none'})")
    return tasks, [t for t in common if t not in tasks]


class Matched(NamedTuple):
    ids: list[str]  # answered in both, in the reference's order
    reference: list[dict]  # the records, aligned with ids
    candidate: list[dict]
    totals: tuple[int, int]  # items in each evaluation, matched or not


def match(reference: Path, candidate: Path, task: str) -> Matched:
    """The items both evaluations answered; refuses differing prompts and an empty overlap."""
    ref, cand = read_records(reference, task), read_records(candidate, task)
    ids = [i for i in ref if i in cand]
    if not ids:
        raise SdftError(f"task '{task}': the two evaluations share no item ids "
                        f"({len(ref)} in {reference}, {len(cand)} in {candidate}); were they run on "
                        f"the same data?")
    differing = [i for i in ids if ref[i]["prompt"] != cand[i]["prompt"]]
    if differing:
        i = differing[0]
        raise SdftError(f"task '{task}': {len(differing)} of {len(ids)} shared items have different "
                        f"prompts (first: id {i}: {ref[i]['prompt'][:120]!r} vs "
                        f"{cand[i]['prompt'][:120]!r}); "
                        f"compare evaluations run with the same template and data")
    return Matched(ids, [ref[i] for i in ids], [cand[i] for i in ids], (len(ref), len(cand)))


def setting(results: dict, key: str):
    """A model setting from results.json: top level first, then the recorded eval config."""
    if results.get(key) is not None:
        return results[key]
    return results.get("provenance", {}).get("config", {}).get(key)


def temperatures(results: dict) -> list[float]:
    return [float(t) for entry in results.get("tasks", {}).values()
            if (t := ((entry.get("settings") or {}).get("decoding") or {}).get("temperature")) is not None]


def text_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as aligned text lines, the first row a header underlined with dashes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
