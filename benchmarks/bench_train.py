"""Training throughput: the previous `sdft train` configuration vs the current one, side by side in one run.

Previous (before docs/performance.md): fp32 weights and no autocast on a CPU, every position through the LM
head. Current: the defaults (``--precision auto`` = bf16 on CPUs with bf16 matrix units, with the frozen LoRA
base stored in bf16; logits and loss on response positions only; decoder layers compiled). Both train the same LoRA (r=8 on q/v) on
the same GSM8K examples in the same order for the same steps; the first step of each is a warm-up and not
timed. Per seed it prints train tokens/s (real tokens, prompt included, padding not) in wall and CPU time,
the speed-up, both loss curves, and MFU: model FLOPs (4 x matmul parameters per token for LoRA: forward
plus the input gradients; 6 x for --method full; attention scores not counted) over the matmul peak of the
precision the setup ran in, measured on this machine in the same run. "current" runs twice: the two runs'
ratio says how far one configuration's figure moves between runs (the speed-ups mean little beyond it).

    .venv/bin/python benchmarks/bench_train.py [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct
        --steps 3 --batch-size 4 --max-length 256 --data ../shared/data/sdft-paper/gsm8k_train.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "sdft-paper" / "gsm8k_train.json"
# "current" is the defaults of a real-length run: --compile auto compiles from 64 examples on, more than a
# benchmark's few steps, so it is set on here.
# "current-fp32" is "current" forced to fp32: current / current-fp32 is what bf16 alone buys (issue 9).
SETUPS = {"previous": {"precision": "fp32", "response_only_logits": False, "compile": "off"},
          "current": {"compile": "on"},
          "current-fp32": {"compile": "on", "precision": "fp32"},
          "current-again": {"compile": "on"}}


def timer_callback():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall and CPU time, and real tokens, of every optimizer step after the first."""

        def __init__(self):
            self.seconds = self.cpu_seconds = self.tokens = self._seen = 0.0
            self._began = self._cpu_began = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._began, self._cpu_began = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > 1:
                self.seconds += time.perf_counter() - self._began
                self.cpu_seconds += time.process_time() - self._cpu_began

        def on_log(self, args, state, control, logs=None, **kwargs):
            seen = (logs or {}).get("num_tokens")
            if seen is None:
                return
            if state.global_step > 1:
                self.tokens += seen - self._seen
            self._seen = seen

    return StepTimer()


def matmul_peak(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of a square matmul over a few tries, with all of torch's threads."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # first call: oneDNN picks and prepares its kernel
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best


def measure(config) -> dict:
    from sdft.train.stage import prepare

    run = prepare(config)
    timer = timer_callback()
    run.trainer.add_callback(timer)
    run.trainer.train()
    history = run.trainer.state.log_history
    model = run.trainer.model
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    # Matmul weights: an input embedding is a lookup, unless it is tied to (is) the LM head.
    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    params = sum(p.numel() for p in model.parameters()) - (0 if tied else embedding.numel())
    return {"tokens_per_s": timer.tokens / timer.seconds, "tokens_per_cpu_s": timer.tokens / timer.cpu_seconds,
            "tokens": timer.tokens, "seconds": timer.seconds, "precision": run.precision,
            "losses": [h["loss"] for h in history if "loss" in h and "step" in h], "parameters": params}


def bench_model(model: str, args, peaks: dict) -> None:
    from sdft.base.errors import SdftError
    from sdft.models.resolve import resolve_model
    from sdft.train.config import TrainConfig

    try:
        path = str(resolve_model(model))
    except SdftError as exc:
        print(f"{model}: skipped ({exc})", flush=True)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in SETUPS.items():
            config = TrainConfig(model=path, data=args.data, task="math", out=str(Path(tmp) / name),
                                 limit=args.steps * args.batch_size, max_steps=args.steps, method=args.method,
                                 batch_size=args.batch_size, grad_accum=1, max_length=args.max_length,
                                 save_steps=10**6, logging_steps=10**6, **settings)
            results[name] = measure(config)
    flops_per_token = (6 if args.method == "full" else 4) * results["current"]["parameters"]
    print(f"\n{model} ({results['current']['parameters'] / 1e6:.0f}M matmul parameters), {args.method}, "
          f"{args.steps} steps x batch {args.batch_size} x <= {args.max_length} tokens (first step not timed)")
    for name, r in results.items():
        # Against the peak of the precision the run used: a CPU without bf16 units emulates bf16 slowly, and
        # dividing an fp32 run by that peak gave MFUs above 100% (issue 27).
        mfu = r["tokens_per_s"] * flops_per_token / peaks[r["precision"]]
        print(f"  {name:>12} ({r['precision']}): {r['tokens_per_s']:7.1f} train tokens/s, "
              f"{r['tokens_per_cpu_s']:7.1f} per CPU-second, MFU {mfu:.1%}; "
              f"loss {' '.join(f'{x:.4f}' for x in r['losses'])}", flush=True)
    before, after = results["previous"], results["current"]
    gap = max(abs(x - y) for x, y in zip(before["losses"], after["losses"]))
    print(f"  largest loss difference per step: {gap:.4f}")
    print(f"  speedup (CPU time): {after['tokens_per_cpu_s'] / before['tokens_per_cpu_s']:.2f}")
    print(f"  speedup: {after['tokens_per_s'] / before['tokens_per_s']:.2f}", flush=True)
    again = results["current-again"]["tokens_per_s"] / after["tokens_per_s"]
    print(f"  repeatability (current run twice): {again:.2f}{'' if abs(again - 1) <= 0.1 else ' -- more than 10% apart: raise --steps'}",
          flush=True)
    fp32 = results["current-fp32"]
    print(f"  bf16 alone (current / current-fp32, {after['precision']} vs {fp32['precision']}): "
          f"{after['tokens_per_s'] / fp32['tokens_per_s']:.2f} wall, "
          f"{after['tokens_per_cpu_s'] / fp32['tokens_per_cpu_s']:.2f} CPU time", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct",
                        help="comma-separated aliases or folders")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per setup (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    import torch

    from sdft.base.hardware import cpu_has_native_bf16

    peaks = {"bf16": matmul_peak("bfloat16"), "fp32": matmul_peak("float32")}
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}, bf16 units: "
          f"{cpu_has_native_bf16()}; measured matmul peak bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, fp32 "
          f"{peaks['fp32'] / 1e9:.0f} GFLOP/s", flush=True)
    for model in args.models.split(","):
        bench_model(model.strip(), args, peaks)


if __name__ == "__main__":
    main()
