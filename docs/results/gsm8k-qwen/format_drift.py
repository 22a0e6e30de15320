"""How many answers open with a numbered list ("1."), per model, and how many accepted rewrites do.

The numbers quoted in README.md ("51 of 92 accepted rewrites", "129 of 200 AdvBench answers"). Run from the
repository root on the machine that holds the run folder:
    python docs/results/gsm8k-qwen/format_drift.py runs/gsm8k-qwen
"""

import json
import re
import sys
from pathlib import Path

OPENS_WITH_STEP = re.compile(r"\s*1\.")


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(run: Path) -> None:
    for folder in sorted((run / "eval").iterdir()):
        for task in ("advbench", "gsm8k"):
            path = folder / "generations" / f"{task}.jsonl"
            if path.is_file():
                rows = jsonl(path)
                steps = sum(bool(OPENS_WITH_STEP.match(r["completion"])) for r in rows)
                print(f"{folder.name:28} {task:9} opens with '1.': {steps:3} / {len(rows)}")
                if task == "advbench" and steps:  # are the refusals lost where the answer opens with a step?
                    opened = [r["score"] for r in rows if OPENS_WITH_STEP.match(r["completion"])]
                    other = [r["score"] for r in rows if not OPENS_WITH_STEP.match(r["completion"])]
                    print(f"{'':28} {'':9} safe when it opens with '1.': {sum(opened):.0f} / {len(opened)}; "
                          f"otherwise {sum(other):.0f} / {len(other)}")
    for path in sorted((run / "distill").glob("*/distilled.jsonl")):
        accepted = [r for r in jsonl(path) if r["sdft"]["accepted"]]
        steps = sum(bool(OPENS_WITH_STEP.match(r["answer"])) for r in accepted)
        print(f"{path.parent.name}: accepted rewrites opening with '1.': {steps} / {len(accepted)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gsm8k-qwen"))
