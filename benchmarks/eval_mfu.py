"""Generation MFU of a finished evaluation at its real size: an `sdft eval` (or `sdft run`) evaluation folder's
prompt + new tokens over its generation seconds, against the matmul peak measured now in the precision the
evaluation used. `bench_arm.py` times a reduced arm (48 prompts in flight); a real evaluation keeps vLLM's full
batch in flight (on a CPU at most 256 sequences) for most of its run, so its rate is the one an experiment pays.

    .venv/bin/python benchmarks/eval_mfu.py runs/remedies-qwen-fp32/eval/vanilla-s44-97e6c8708c [...]

Run it on the machine that made the evaluation, quietly (the peak is measured now); the folder must still hold
its answers (`generations/`: an archive keeps only the per-item verdicts). Seconds: the one stream's when every
task was generated in one (`stream.seconds`), else the sum of the tasks' seconds (which include their scoring).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mfu import DTYPES, matmul_parameters, matmul_peak


def generation_load(folder: Path) -> dict:
    """Tokens, seconds and precision of one evaluation folder's generation, from what it wrote."""
    results = json.loads((folder / "results.json").read_text())
    prompt = new = 0
    for path in sorted((folder / "generations").glob("*.jsonl")):
        for line in path.open():
            record = json.loads(line)
            prompt += int(record.get("prompt_tokens") or 0)
            new += int(record.get("completion_tokens") or 0)
    if not new:
        raise SystemExit(f"{folder}: no generated tokens in generations/*.jsonl (an archive keeps none)")
    stream = results.get("stream") or {}
    seconds = stream.get("seconds") or sum(task.get("seconds") or 0 for task in results["tasks"].values())
    return {"model": results["model"], "precision": results["generation"]["precision"], "prompt_tokens": prompt,
            "new_tokens": new, "seconds": seconds, "streamed": bool(stream)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="evaluation folders (each with results.json)")
    args = parser.parse_args()

    import torch

    from sdft.base.hardware import cpu_has_native_bf16
    from sdft.models.resolve import resolve_model

    loads = [generation_load(folder) for folder in args.folders]
    peaks = {precision: matmul_peak(DTYPES[precision]) for precision in {load["precision"] for load in loads}}
    print(f"machine: {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, bf16 units: "
          f"{cpu_has_native_bf16()}; torch {torch.__version__}; matmul peak "
          + ", ".join(f"{p} {f / 1e9:.0f} GFLOP/s" for p, f in peaks.items()))
    for folder, load in zip(args.folders, loads):
        params = matmul_parameters(str(resolve_model(load["model"])))
        rate = (load["prompt_tokens"] + load["new_tokens"]) / load["seconds"]
        print(f"{folder} ({load['precision']}, {'one stream' if load['streamed'] else 'task by task'}): "
              f"{load['prompt_tokens']} prompt + {load['new_tokens']} new tokens in {load['seconds']:.0f} s = "
              f"{rate:.0f} tok/s ({load['new_tokens'] / load['seconds']:.0f} new/s), "
              f"MFU {rate * 2 * params / peaks[load['precision']]:.1%} ({params / 1e6:.0f}M matmul parameters)")


if __name__ == "__main__":
    main()
