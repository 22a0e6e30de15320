"""Issue 23: every model of a remedy run against the seed, item by item, from the per-item files alone (ids and
verdicts, no answer text). Run from the repository root, on a run folder or its archive:

    .venv/bin/python docs/results/remedies-qwen/vs_seed.py docs/results/remedies-qwen/run-fp32 > docs/results/remedies-qwen/vs-seed-fp32.txt

One row per model and task: both scores, the paired difference with its 95% interval (Bonett-Price), items
gained / lost and the exact McNemar p. One model is one training seed: the interval covers the items, not the
training randomness (the report's section "Each model vs the seed" adds seed-level rows once an arm has
several seeds). Two evaluation folders are paired by `sdft analyze paired --reference A --candidate B`."""

import json
import sys
from pathlib import Path

from sdft.base.layout import Manifest
from sdft.base.stats import paired_comparison

TASKS = {"gsm8k": "GSM8K", "advbench": "AdvBench safe", "humaneval": "HumanEval pass@1",
         "ifeval": "IFEval prompt strict"}


def scores(eval_dir: Path) -> dict[str, dict[str, float]]:
    out = {}
    for task in TASKS:
        path = eval_dir / "item_scores" / f"{task}.jsonl"
        if path.is_file():
            out[task] = {r["id"]: float(r["score"]) for r in map(json.loads, path.read_text().splitlines()) if r}
    return out


def main(run: Path) -> None:
    manifest = Manifest.read(run)
    folders = {label: arm.eval.path(run) for label, arm in manifest.arms.items()}
    seed = scores(folders.pop("seed"))
    print(f"Each model of {run} against the seed, paired over the same items (95% interval, gained / lost, "
          "exact McNemar p); one training seed per model.\n")
    print("| model | task | seed | model | model − seed [95%] | gained / lost | p |\n|---|---|---|---|---|---|---|")
    for label, folder in folders.items():
        rows(label, seed, scores(folder))


def rows(label: str, base: dict, mine: dict) -> None:
    for task, name in TASKS.items():
        if task not in mine or task not in base:
            continue
        ids = sorted(set(mine[task]) & set(base[task]))
        c = paired_comparison([mine[task][i] for i in ids], [base[task][i] for i in ids])
        low, high = c["ci95"]
        mean = lambda s: 100 * sum(s[i] for i in ids) / len(ids)  # noqa: E731
        print(f"| {label} | {name} ({len(ids)}) | {mean(base[task]):.1f} | {mean(mine[task]):.1f} | "
              f"{100 * c['mean']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {c['wins']} / {c['losses']} | "
              f"{_p(c['p'])} |")


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


if __name__ == "__main__":
    main(Path(sys.argv[1]))
