"""Parameter shift: the L2 norm of the weight change that fine-tuning made, per module and in total.

The paper uses it as one measure of how far a fine-tuned model moved from the seed model (SDFT should move
it less). The maths: :mod:`sdft.models.adapters`. Results go to ``weight_shift.json``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sdft.base import layout
from sdft.base.store import write_json
from sdft.compare.config import ShiftConfig
from sdft.models import resolve
from sdft.models.adapters import full_shift, lora_shift, total_norm


def parameter_shift(config: ShiftConfig) -> dict:
    """Compute the shift for ``--adapter`` or ``--tuned``, save ``weight_shift.json``, return the result."""
    config.validate()
    if config.adapter:
        result = lora_shift(config.adapter)
        folder = Path(config.adapter)
    else:
        result = full_shift(resolve.resolve_model(config.model), config.tuned)
        folder = Path(config.tuned)
    out = Path(config.out) if config.out else folder
    result["model"] = config.model
    result["by_kind"] = _by_kind(result["modules"])
    result["saved"] = str(out / layout.WEIGHT_SHIFT)
    write_json(out / layout.WEIGHT_SHIFT, result)
    return result


def _by_kind(modules: dict[str, float]) -> dict[str, float]:
    """Totals per module kind (q_proj, v_proj, ...), the view that compares runs at a glance."""
    kinds: dict[str, list[float]] = defaultdict(list)
    for name, value in modules.items():
        kinds[name.rsplit(".", 1)[-1]].append(value)
    return {kind: total_norm(values) for kind, values in sorted(kinds.items())}


def summarize(result: dict, max_rows: int = 40) -> str:
    modules = result["modules"]
    changed = {name: value for name, value in modules.items() if value > 0}
    rows = sorted(changed.items())
    notes = []
    if len(rows) > max_rows:  # a 7B model has hundreds of modules: show the largest, the rest are in weight_shift.json
        rows = sorted(changed.items(), key=lambda kv: -kv[1])[:max_rows]
        notes.append(f"{len(changed) - max_rows} smaller changes not shown")
    if len(changed) < len(modules):  # e.g. a merged LoRA: every module it did not adapt is unchanged
        notes.append(f"{len(modules) - len(changed)} unchanged modules not shown")
    formula = "||B @ A * scale||" if result["kind"] == "lora" else "||tuned - base||"
    lines = [f"parameter shift ({result['kind']}: {formula}, L2 norm)"]
    if rows:
        width = max(len(name) for name, _ in rows)
        lines.append(f"  {'module'.ljust(width)}  L2")
        lines += [f"  {name.ljust(width)}  {value:.6g}" for name, value in rows]
    if notes:
        lines.append(f"  ({'; '.join(notes)}; all are in {result['saved']})")
    lines += ["  by kind: " + ", ".join(f"{k} {v:.6g}" for k, v in result["by_kind"].items() if v > 0 or not changed),
              f"  total ({len(modules)} modules): {result['total']:.6g}", f"  saved: {result['saved']}"]
    return "\n".join(lines)
