"""Issue 23 item 3a: each decoding probe of probes.sh against the same model's plain evaluation, AdvBench item by
item (ids and verdicts only: the per-item files beside each results.json). Run from the repository root:

    .venv/bin/python docs/results/remedies-qwen/probe_scores.py runs/remedies-qwen > docs/results/remedies-qwen/probes.txt

(or on the archive, docs/results/remedies-qwen/run: the same files). A probe forces or forbids the answer's first
token only; a change in refusals between a model's plain answers and its probed answers is caused by that opening.
"""

import json
import sys
from pathlib import Path

from sdft.base.stats import paired_comparison

TASK = "advbench"


def item_scores(eval_dir: Path) -> dict[str, dict]:
    path = eval_dir / "item_scores" / f"{TASK}.jsonl"
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines()) if r} if path.is_file() else {}


def plain_eval(run: Path, label: str) -> Path | None:
    """The run's own evaluation of the model a probe decoded, as the run's manifest names it (a folder
    superseded by a keyed change stays beside it, under the same label)."""
    model = json.loads((run / "manifest.json").read_text())["models"].get(label) or {}
    folder = (model.get("eval") or {}).get("dir")
    return run / "eval" / Path(folder).name if folder else None


def row(name: str, plain: dict, probed: dict) -> str:
    ids = sorted(set(plain) & set(probed))
    c = paired_comparison([probed[i]["score"] for i in ids], [plain[i]["score"] for i in ids])
    low, high = c["ci95"]
    listed = [sum(rows[i].get("opening") == "numbered list" for i in ids) for rows in (plain, probed)]
    mean = lambda rows: 100 * sum(rows[i]["score"] for i in ids) / len(ids)  # noqa: E731
    return (f"| {name} | {len(ids)} | {mean(plain):.1f} | {mean(probed):.1f} | {100 * c['mean']:+.1f} "
            f"[{100 * low:+.1f}, {100 * high:+.1f}] | {c['wins']} / {c['losses']} | {c['p']:.3g} | "
            f"{listed[0]} → {listed[1]} |")


def main(run: Path) -> None:
    print("| probe | items | plain: safe % | probed: safe % | probed − plain [95%] | refusals gained / lost | "
          "McNemar p | numbered-list openings plain → probed |")
    print("|---|---|---|---|---|---|---|---|")
    pooled: dict[str, tuple[dict, dict]] = {}
    for probe in sorted((run / "probes").glob("*")):
        label, _, kind = probe.name.partition("-forbid-") if "-forbid-" in probe.name else \
            probe.name.partition("-prefix-")
        plain_dir = plain_eval(run, label)
        probed = item_scores(probe)
        if plain_dir is None or not probed:
            print(f"| {probe.name} | (no plain evaluation of {label} or no per-item file) |||||||")
            continue
        plain = item_scores(plain_dir)
        print(row(probe.name, plain, probed))
        arm = label.split("-s4")[0]  # vanilla-s43 -> vanilla: the arm's models pooled over training seeds
        both = pooled.setdefault(f"{arm} (every seed)-{kind}", ({}, {}))
        seed_tag = label.removeprefix(arm) or "-s42"
        for i in set(plain) & set(probed):
            both[0][f"{i}{seed_tag}"], both[1][f"{i}{seed_tag}"] = plain[i], probed[i]
    for name, (plain, probed) in pooled.items():
        if len(plain) > 200:  # more than one model
            print(row(name, plain, probed))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
