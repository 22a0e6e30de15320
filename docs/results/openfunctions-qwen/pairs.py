"""Paired differences between any two finished models of runs/openfunctions-qwen, on the same items.

Usage, from the repository root after `sdft run configs/experiments/openfunctions-qwen.yaml`:
    .venv/bin/python docs/results/openfunctions-qwen/pairs.py vanilla-s43,vanilla mix0.5,vanilla
(labels as in runs/openfunctions-qwen/eval/: vanilla, sdft, mix0.5, vanilla-s43, ...; seed = the seed model).
"""
import glob
import json
import sys

sys.path.insert(0, ".")
from sdft.base.stats import paired_comparison

RUN = "runs/openfunctions-qwen/eval"
TASKS = ["openfunctions", "humaneval", "advbench", "gsm8k"]


def scores(label, task):
    # The label must match up to the stage hash: "vanilla" must not pick up "vanilla-s43-...".
    path = [p for p in glob.glob(f"{RUN}/{label}-*/generations/{task}.jsonl")
            if p.split("/")[-3].rsplit("-", 1)[0] == label]
    return {row["id"]: row["score"] for row in map(json.loads, open(path[0]))}


def compare(a, b):
    for task in TASKS:
        try:
            x, y = scores(a, task), scores(b, task)
        except IndexError:
            continue
        ids = sorted(set(x) & set(y))
        r = paired_comparison([x[i] for i in ids], [y[i] for i in ids])
        print(f"{a} - {b} {task}: {100*r['mean']:+.1f} [{100*r['ci95'][0]:+.1f}, {100*r['ci95'][1]:+.1f}] "
              f"better {r['wins']} worse {r['losses']} p={r['p']:.3g}")


for pair in sys.argv[1:]:
    compare(*pair.split(","))
