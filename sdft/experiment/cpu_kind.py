"""One CPU kind per run for bf16 answers. Answers made in bf16 differ between a CPU with bf16 matrix units and one
without (oneDNN emulates bf16 there with other roundings): the remedy run's seed, generated again in bf16 on a
CPU without them, gave 61 of 200 AdvBench answers another text and 3 another verdict
(docs/results/remedies-qwen/README.md). A run whose bf16 stages were made on one kind and that is resumed on
the other would mix the two in one comparison, so `sdft run` stops there unless told to accept it, and records
that it was. fp32 answers do not depend on the kind: the fp32 remedy run's seed answers, made on an Intel Xeon
without bf16 units, came back identical (96 of 96 by hash) on one with AVX512-BF16
(docs/results/arm-cost/cores-check-fp32-2026-12-08.txt), so fp32 stages are not counted."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from sdft.base.errors import ConfigError
from sdft.base.store import append_json_entry
from sdft.generation.auto import cpu_bf16_support, cuda_available

ACCEPTED = "mixed-cpu.json"  # in the run folder: every resumption that accepted another CPU kind
RECORDS = ("eval/*/results.json", "distill/*/run.json")  # the stages that generate record their machine


def recorded(run_dir: Path) -> dict[bool, list[str]]:
    """The CPU kinds (bf16 units or not) the run's finished generating stages recorded, with their folders; stages
    that generated in fp32 are left out (their answers are the same on both kinds)."""
    kinds: dict[bool, list[str]] = {}
    for pattern in RECORDS:
        for path in sorted(run_dir.glob(pattern)):
            try:
                generation = json.loads(path.read_text()).get("generation") or {}
            except (OSError, ValueError):
                continue  # an unfinished or damaged record: its stage runs again anyway
            if "cpu_bf16" in generation and generation.get("precision") != "fp32":
                kinds.setdefault(bool(generation["cpu_bf16"]), []).append(str(path.parent.relative_to(run_dir)))
    return kinds


def check(run_dir: Path, accept: bool, log=print) -> None:
    """Stop (or, when ``accept``, note in ``mixed-cpu.json``) a run resumed on a CPU of another kind than the
    one its stages ran on. GPUs are not checked: their host CPU does not make the answers."""
    if cuda_available():
        return
    here = cpu_bf16_support()
    other = recorded(run_dir).get(not here)
    if not other:
        return
    message = (f"{run_dir}: {len(other)} finished stage(s) ran on a CPU {'with' if not here else 'without'} bf16 "
               f"units ({other[0]}), this CPU has {'them' if here else 'none'}; answers at one precision differ "
               f"between the two kinds")
    if not accept:
        raise ConfigError(f"{message}: resume on a CPU of the first kind, or accept the mix with --mixed-cpu")
    path = run_dir / ACCEPTED
    append_json_entry(path, "accepted", {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                         "cpu_bf16": here, "stages_of_the_other_kind": other})
    log(f"[warn] {message}; accepted (--mixed-cpu), recorded in {path}")
