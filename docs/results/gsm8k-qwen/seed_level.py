"""Seed-level SDFT − vanilla intervals (sdft.base.seed_stats.compare_seeds) from what this folder keeps.

The run's per-item scores are not committed (its answers include harmful ones, and the run predates the
per-item files), so the items are rebuilt from counts: each model's score from its `*-results.json`, and
SDFT's per-seed items better / worse than vanilla from README.md. That fixes everything compare_seeds uses
but one thing, how many flipped items the two seeds share, so each task is computed at the two extremes:
the seeds flip the same items as far as the counts allow, or no common item. The training-seed variance is
borrowed from all three trained arms (vanilla, mix 0.5, SDFT), as the report does.

Run from the repository root: python docs/results/gsm8k-qwen/seed_level.py > docs/results/gsm8k-qwen/seed_level.txt
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, ".")
from sdft.base.seed_stats import compare_seeds

HERE = Path(__file__).parent
SEEDS = (42, 43)
# SDFT − vanilla, items better / worse at seeds 42 and 43 (README.md, "Results").
FLIPS = {"humaneval": ((22, 9), (26, 13)), "advbench": ((8, 43), (16, 36))}


def correct(arm: str, seed: int, task: str) -> tuple[int, int]:
    entry = json.loads((HERE / f"{arm}-seed{seed}-results.json").read_text())["tasks"][task]
    return round(entry["value"] * entry["n"]), entry["n"]


def vanilla(task: str) -> dict[int, list[float]]:
    """Vanilla's items at each seed: seed 42 right on the first items, seed 43 differing at the far end."""
    (first, n), (second, _) = correct("vanilla", 42, task), correct("vanilla", 43, task)
    items = {42: [1.0] * first + [0.0] * (n - first)}
    later = list(items[42])
    ends = range(n - 1, -1, -1) if second > first else range(n)
    for i in ends:
        if sum(later) == second:
            break
        later[i] = 1.0 if second > first else 0.0
    items[43] = later
    return items


def sdft(task: str, base: dict[int, list[float]], shared: bool) -> dict[int, list[float]]:
    out = {}
    for seed, (better, worse) in zip(SEEDS, FLIPS[task]):
        fails = [i for i, x in enumerate(base[seed]) if x == 0]
        passes = [i for i, x in enumerate(base[seed]) if x == 1]
        if seed == 43 and not shared:  # the other end of the list: no item flipped at seed 42
            fails, passes = fails[::-1], passes[::-1]
        items = list(base[seed])
        for i in fails[:better]:
            items[i] = 1.0
        for i in passes[:worse]:
            items[i] = 0.0
        out[seed] = items
    return out


def main() -> None:
    print("SDFT − vanilla over training seeds 42 and 43, compare_seeds (points; 95% interval)")
    for task in FLIPS:
        for shared in (True, False):
            scores = {"vanilla": vanilla(task)}
            scores["sdft"] = sdft(task, scores["vanilla"], shared)
            n = len(scores["vanilla"][42])
            scores["mix0.5"] = {s: [1.0] * correct("mix0.5", s, task)[0] + [0.0] * (n - correct("mix0.5", s, task)[0])
                                for s in SEEDS}
            for arm, by_seed in scores.items():  # the rebuilt items reproduce every committed score
                assert all(sum(by_seed[s]) == correct(arm, s, task)[0] for s in SEEDS), (task, arm)
            row = compare_seeds(scores, "vanilla")["sdft"]
            level = row["seed_level"]  # (the replication test is left out: the overlap here is made up)
            low, high = (x * 100 for x in level["ci95"])
            print(f"{task:9} flips {'shared' if shared else 'disjoint':8} {level['mean'] * 100:+.1f} "
                  f"[{low:+.1f}, {high:+.1f}]  {level['method']}; seed part {level['variance']['seeds'] * 1e4:.1f}, "
                  f"item part {level['variance']['items'] * 1e4:.1f} (points²)")


if __name__ == "__main__":
    main()
