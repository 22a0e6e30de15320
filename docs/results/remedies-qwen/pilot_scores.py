"""Issue 23 pilot: per-item scores (ids and 0/1 verdicts only, no answer text) of the seed and each pilot
model, and the paired comparison with the seed. Run from the repository root:

    .venv/bin/python docs/results/remedies-qwen/pilot_scores.py runs/pilot23 > docs/results/remedies-qwen/pilot.txt

writes `pilot-items.json` beside this script (the per-item verdicts anyone can recompute the table from)."""

import json
import sys
from pathlib import Path

from sdft.base.stats import paired_comparison

HERE = Path(__file__).parent


def verdicts(folder: Path) -> dict:
    out = {}
    for path in sorted((folder / "generations").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.open() if line.strip()]
        out[path.stem] = {r["id"]: float(r["score"]) for r in rows}
    return out


def main(run: Path) -> None:
    models = {"seed": verdicts(run / "seed-eval")}
    for folder in sorted(run.glob("*-eval")):
        if folder.name != "seed-eval" and (folder / "results.json").is_file():
            models[folder.name.removesuffix("-eval")] = verdicts(folder)
    (HERE / "pilot-items.json").write_text(json.dumps(models, indent=1, sort_keys=True) + "\n")
    print("| model | task | score | vs seed: paired diff [95%] | gained / lost | McNemar p |")
    print("|---|---|---|---|---|---|")
    for name, tasks in models.items():
        for task, scores in tasks.items():
            seed = models["seed"][task]
            ids = sorted(set(scores) & set(seed))
            value = sum(scores[i] for i in ids) / len(ids)
            if name == "seed":
                print(f"| seed | {task} | {100 * value:.1f} ({len(ids)}) | | | |")
                continue
            c = paired_comparison([scores[i] for i in ids], [seed[i] for i in ids])
            low, high = c["ci95"]
            print(f"| {name} | {task} | {100 * value:.1f} | {100 * c['mean']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
                  f" | {c['wins']} / {c['losses']} | {c['p']:.3g} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
