"""Where a training step's time goes: ``torch.profiler`` over a few steps of ``sdft train``.

Prints one table of regions (data collation, forward of the transformer body, the LM head with its loss,
backward, optimizer, precision casts, what no operator accounts for = Python and framework overhead) and
the operators with the most self CPU time. The first step is a warm-up and not profiled.

    .venv/bin/python benchmarks/profile_train.py --model smollm2-135m-instruct [--steps 3 --batch-size 4
        --max-length 256 --set precision=bf16 ...]

``--set KEY=VALUE`` sets any ``TrainConfig`` field (repeatable), so the same script profiles the setup
before and after a change. Results are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "sdft-paper" / "gsm8k_train.json"
# Operator names that are precision casts (autocast's copies of fp32 weights, upcasts of logits).
CASTS = ("aten::to", "aten::_to_copy", "aten::copy_")
REGIONS = ("data: collate", "forward: body", "forward: lm head + loss", "backward", "optimizer")


@contextmanager
def region(name: str):
    import torch

    with torch.profiler.record_function(name):
        yield


def wrap(owner, attr: str, name: str) -> None:
    """Run ``owner.attr`` inside a profiler region called ``name``."""
    inner = getattr(owner, attr)

    def wrapped(*args, **kwargs):
        with region(name):
            return inner(*args, **kwargs)

    setattr(owner, attr, wrapped)


def label_regions(trainer) -> None:
    """Name the parts of a step; the optimizer step is named by torch itself ('Optimizer.step#...')."""
    import trl.trainer.utils as trl_utils

    chunked = trl_utils._ChunkedLogProbFunction

    class Labelled:  # TRL's fused LM head calls ``_ChunkedLogProbFunction.apply``
        @staticmethod
        def apply(*args):
            with region("forward: lm head + loss"):
                return chunked.apply(*args)

    trl_utils._ChunkedLogProbFunction = Labelled
    model = trainer.model
    body = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    wrap(body, "forward", "forward: body")
    wrap(trainer.accelerator, "backward", "backward")
    collate = trainer.data_collator  # called as a function: wrap the object, not its __call__

    def labelled_collate(features):
        with region("data: collate"):
            return collate(features)

    trainer.data_collator = labelled_collate


def profile(config, steps: int) -> tuple[float, object, int]:
    import torch
    from transformers import TrainerCallback

    from sdft.train.stage import prepare

    run = prepare(config)
    label_regions(run.trainer)
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    times: list[float] = []

    class Stepper(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:  # the first step (allocations, lazy init) is a warm-up
                prof.start()
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.began)

        def on_train_end(self, args, state, control, **kwargs):
            prof.stop()

    run.trainer.add_callback(Stepper())
    run.trainer.train()
    tokens = sum(run.lengths[i] for i in run.order[config.batch_size:steps * config.batch_size])
    return sum(times[1:]), prof, tokens


def table(seconds: float, prof, tokens: int, steps: int) -> str:
    events = prof.key_averages()
    total = {e.key: e.cpu_time_total / 1e6 for e in events}
    self_time = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    rows = [(name, total.get(name, 0.0)) for name in REGIONS[:-1]]
    rows.append(("optimizer", sum(v for k, v in total.items() if k.startswith("Optimizer.step"))))
    # Casts nest inside the regions above: listed for their share, not added to the sum.
    casts = sum(self_time.get(k, 0.0) for k in CASTS)
    accounted = sum(v for _, v in rows)
    rows.append(("other (Python, Trainer, hooks)", max(seconds - accounted, 0.0)))
    lines = [f"{steps - 1} profiled steps, {seconds:.2f} s, {tokens} real tokens, {tokens / seconds:.0f} tokens/s",
             "", "| region | seconds | share |", "|---|---|---|"]
    lines += [f"| {name} | {value:.2f} | {value / seconds:.0%} |" for name, value in rows]
    lines.append(f"| (within the above) precision casts {'/'.join(CASTS)} | {casts:.2f} | {casts / seconds:.0%} |")
    lines += ["", "| operator | self CPU s | share |", "|---|---|---|"]
    ops = sorted(((k, v) for k, v in self_time.items() if k.startswith("aten::")), key=lambda kv: -kv[1])
    lines += [f"| {k} | {v:.2f} | {v / seconds:.0%} |" for k, v in ops[:12]]
    return "\n".join(lines)


def parse_set(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--task", default="math")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps; the first is not profiled")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE: any TrainConfig field")
    args = parser.parse_args()

    import torch

    from sdft.models.resolve import resolve_model
    from sdft.train.config import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(model=str(resolve_model(args.model)), data=args.data, task=args.task,
                             out=str(Path(tmp) / "run"), limit=args.steps * args.batch_size, max_steps=args.steps,
                             batch_size=args.batch_size, grad_accum=1, max_length=args.max_length,
                             save_steps=10**6, logging_steps=10**6, **parse_set(args.set))
        seconds, prof, tokens = profile(config, args.steps)
    print(f"{args.model}: batch {args.batch_size} x {args.max_length} tokens, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, settings {parse_set(args.set) or 'default'}")
    print(table(seconds, prof, tokens, args.steps))


if __name__ == "__main__":
    main()
