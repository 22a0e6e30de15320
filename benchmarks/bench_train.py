"""Training throughput: our setup vs a naive padded baseline, on the embedded model, in one run.

Ours: batches grouped by length (little padding), no gradient checkpointing, fp32 on CPU.
Naive: every batch padded to --max-length, gradient checkpointing on (what a default SFT recipe does).
Both train the same LoRA on the same examples (real Alpaca data) for the same steps; the first step of each
is a warm-up and not timed. Tokens/s counts real (non-padding) tokens, so the ratio is the speed-up a
user sees. Prints both rates and ``speedup: N.NN`` (wall time), and the same ratio in CPU time, which other
jobs on a shared machine disturb much less.

    .venv/bin/python benchmarks/bench_train.py [--steps 4 --batch-size 4 --max-length 512 --limit 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "sdft-paper" / "alpaca_train.json"


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


def measure(config, naive: bool) -> dict:
    from sdft import train_data
    from sdft.train import prepare

    run = prepare(config)
    if naive:
        # Fixed-length padding: every batch is max_length long, whatever its examples.
        run.trainer.data_collator.pad_to_multiple_of = config.max_length
    timer = timer_callback()
    run.trainer.add_callback(timer)
    run.trainer.train()
    used = run.order[:run.steps * config.batch_size]
    real = sum(run.lengths[i] for i in used)
    padding = real / (len(used) * config.max_length) if naive else \
        train_data.padding_efficiency(run.lengths, used, config.batch_size)
    return {"tokens_per_s": timer.tokens / timer.seconds, "seconds": timer.seconds, "tokens": timer.tokens,
            "tokens_per_cpu_s": timer.tokens / timer.cpu_seconds, "real_token_share": padding}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per setup (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--limit", type=int, default=64)
    args = parser.parse_args()

    import torch

    from sdft.models import resolve_model
    from sdft.train import TrainConfig

    model = resolve_model(args.model)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, naive in (("ours", False), ("naive", True)):
            config = TrainConfig(model=model, data=args.data, out=str(Path(tmp) / name), limit=args.limit,
                                 max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                                 max_length=args.max_length, gradient_checkpointing=naive,
                                 save_steps=10**6, logging_steps=10**6)
            results[name] = measure(config, naive)
            print(f"{name:>5}: {results[name]['tokens_per_s']:8.1f} train tokens/s "
                  f"({results[name]['tokens']:.0f} tokens in {results[name]['seconds']:.1f} s; "
                  f"{results[name]['real_token_share']:.0%} of the batch tokens are real)", flush=True)
    print(f"setup: {args.model}, {args.steps} steps x batch {args.batch_size}, max length {args.max_length}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    # CPU seconds are what a shared machine's other jobs disturb least; wall seconds are what a user waits.
    print(f"speedup (CPU time): {results['ours']['tokens_per_cpu_s'] / results['naive']['tokens_per_cpu_s']:.2f}")
    print(f"speedup: {results['ours']['tokens_per_s'] / results['naive']['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
