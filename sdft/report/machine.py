"""The machine behind a report's seconds, in the words of the records the stages wrote.

Seconds compare arms only on the same machine and precision: the cost table's caption says which, from the
evaluation records (host, generation backend and precision, whether the CPU has native bf16 and how fast its
bf16 matmuls measured against fp32's) and the training records (device, precision). No record names the
processor model, and the caption says so rather than guessing it from this machine.
"""

from __future__ import annotations

from sdft.base.layout import Manifest


def machine_line(manifest: Manifest) -> str:
    """" Machine, as recorded: ..." (several values where stages differ), or "" when nothing is recorded."""
    results = [arm.eval.result for arm in manifest.arms.values()]
    generation = [r.get("generation") or {} for r in results]
    training = [(arm.train.result or {}).get("training") or {} for arm in manifest.trained()]
    parts = [("host", _distinct((r.get("provenance") or {}).get("host") for r in results)),
             ("training on", _distinct(_pair(t.get("device"), t.get("precision")) for t in training)),
             ("evaluation with", _distinct(_pair(g.get("backend"), g.get("precision")) for g in generation)),
             ("CPU with native bf16:", _distinct(_yes_no(g.get("cpu_bf16")) for g in generation)),
             ("its bf16 matmuls measured at", _distinct(_ratio(g.get("cpu_bf16_speedup")) for g in generation))]
    found = [f"{what} {values}" for what, values in parts if values]
    if not found:
        return ""
    return " Machine, as recorded: " + "; ".join(found) + ". The records name no processor model."


def _pair(where: str | None, precision: str | None) -> str | None:
    return None if where is None else where + (f" in {precision}" if precision else "")


def _ratio(speedup: float | None) -> str | None:
    return None if speedup is None else f"{speedup:.2f}x fp32's speed"


def _yes_no(flag: bool | None) -> str | None:
    return None if flag is None else "yes" if flag else "no"


def _distinct(values) -> str:
    return ", ".join(dict.fromkeys(v for v in values if v))
