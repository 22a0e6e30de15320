"""Distillation through vLLM chunk by chunk (the previous way) and in one stream (the current default), on the
same problems, side by side in one process, with equal answers checked.

Each configuration distils the first N GSM8K training problems with the Qwen seed (the remedy run's settings:
greedy, 384 new tokens, the seed's own system prompt, vLLM) into an empty folder; the engine is started once
and shared, so the figures compare generation alone. Configurations alternate (previous, current, previous, ...)
for ``--repeat`` rounds. Printed: wall seconds of the distillation, new tokens per second, and whether every
rewrite and verdict equals the first run's. The CPU's bf16 units and the precision are printed with them.

    .venv/bin/python benchmarks/bench_distill.py [--problems 256] [--repeat 1] [--precision auto]
        [--model qwen2.5-coder-0.5b-instruct] [--out bench-distill]   # writes <out>/bench-distill.json

Run it on a quiet machine: two heavy jobs at once slow both about 4x.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data" / "sdft-paper"
CONFIGS = {"previous": {"stream_answers": False}, "current": {"stream_answers": True}}


def cpu_kind() -> str:
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    units = sorted({u for u in ("avx512_bf16", "amx_bf16") if u in flags})
    return "bf16 units: " + (", ".join(units) if units else "none")


def one(name: str, args, out: Path) -> dict:
    from sdft.distill.config import DistillConfig
    from sdft.distill.stage import distill

    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    config = DistillConfig(data=str(SHARED / "gsm8k_train.json"), out=str(folder), model=args.model, task="math",
                           limit=args.problems, batch_size=64, max_new_tokens=384, system_prompt="model",
                           backend="vllm", precision=args.precision, progress=False, **CONFIGS[name.split("#")[0]])
    began = time.perf_counter()
    stats = distill(config)
    wall = time.perf_counter() - began
    lines = (folder / "distilled.jsonl").read_text().splitlines()
    return {"config": name, "wall_s": round(wall, 1), "new_tokens": stats["completion_tokens"],
            "new_tokens_per_s": round(stats["completion_tokens"] / wall, 1), "accepted": stats["accepted"],
            "distilled": [json.loads(line)["sdft"] for line in lines]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--out", default="bench-distill")
    args = parser.parse_args()
    from sdft.generation.auto import generation_precision

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{cpu_kind()}; precision {args.precision} -> {generation_precision(args.precision, 'vllm')}; "
          f"{args.problems} problems", flush=True)
    # The engine starts here, once, and every configuration below reuses it (the same model and settings).
    one("previous#warm-up", argparse.Namespace(**{**vars(args), "problems": 2}), out)
    runs = []
    for round_ in range(args.repeat):
        for name in CONFIGS:
            label = name if round_ == 0 else f"{name}#{round_ + 1}"
            runs.append(one(label, args, out))
            r = runs[-1]
            same = r["distilled"] == runs[0]["distilled"]
            print(f"{label:12s} {r['wall_s']:8.1f} s  {r['new_tokens_per_s']:6.1f} new tok/s  "
                  f"{r['accepted']} accepted  answers {'equal to' if same else 'DIFFER from'} {runs[0]['config']}",
                  flush=True)
    by = {name: [r["wall_s"] for r in runs if r["config"].split("#")[0] == name] for name in CONFIGS}
    mean = {name: sum(v) / len(v) for name, v in by.items()}
    print(f"speed-up (mean wall, previous / current): {mean['previous'] / mean['current']:.2f}x")
    (out / "bench-distill.json").write_text(json.dumps(
        {"cpu": cpu_kind(), "args": vars(args), "runs": [{k: v for k, v in r.items() if k != "distilled"}
                                                         for r in runs],
         "equal_answers": all(r["distilled"] == runs[0]["distilled"] for r in runs)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
