"""Training throughput: the previous `sdft train` configuration vs the current one, side by side in one run.

Previous (before docs/performance.md): fp32 weights and no autocast on a CPU, every position through the LM
head. Current: the defaults (``--precision auto`` = bf16 on CPUs with bf16 matrix units, with the frozen LoRA
base stored in bf16; logits and loss on response positions only; decoder layers compiled). Both train the
same LoRA (r=8 on q/v) on the same GSM8K examples in the same order for the same steps; the first step of each
is a warm-up and not timed, nor are steps in which torch.compile made a graph (their seconds are printed
apart). Per seed it prints train tokens/s (real tokens, prompt included, padding not) in wall and CPU time,
the speed-up, both loss curves, and MFU: model FLOPs (4 x matmul parameters per token for LoRA: forward
plus the input gradients; 6 x for --method full; attention scores not counted) over the matmul peak of the
precision the setup ran in, measured on this machine in the same run. "current" runs twice: the two runs'
ratio says how far one configuration's figure moves between runs (the speed-ups mean little beyond it). On a
machine whose speed drifts (a shared host: the matmul peak measured 300 and 226 GFLOP/s an hour apart), use
``--rounds 2`` or more: every setup runs once per round, odd rounds in reverse order (ABBA), and the medians
and every round's speed-up are printed.

    .venv/bin/python benchmarks/bench_train.py [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct
        --steps 3 --batch-size 4 --max-length 256 --batch-order index --setups previous,current,current-padding-free
        --data ../shared/data/sdft-paper/gsm8k_train.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mfu import matmul_peak

DATA = ROOT.parent / "shared" / "data" / "sdft-paper" / "gsm8k_train.json"
# "current" is the defaults of a real-length run: --compile auto compiles from 64 examples on, more than a
# benchmark's few steps, so it is set on here.
# "current-<other>" is "current" in the precision --precision auto did not pick on this CPU (fp32 where bf16 units
# measured faster, bf16 elsewhere): what the choice of precision alone is worth there (issues 9, 27).
# With --ablations, "current" without each of its two precision-free changes: what each is worth on this CPU.
ABLATIONS = {"no-compile": {"compile": "off"}, "no-response-only": {"compile": "on", "response_only_logits": False}}
# "current-padding-free" is "current" with --padding-free (off by default): with --batch-order index, the
# remedy run's common order, it leaves out the padding that order brings (a quarter of that run's tokens).
PADDING_FREE = {"compile": "on", "padding_free": True}


def setups(auto: str, ablations: bool, rounds: int, batch_order: str = "length") -> dict:
    other = "fp32" if auto == "bf16" else "bf16"
    chosen = {"previous": {"precision": "fp32", "response_only_logits": False, "compile": "off"},
              "current": {"compile": "on"},
              f"current-{other}": {"compile": "on", "precision": other}}
    if rounds == 1:  # with more rounds, the rounds themselves say how far one configuration moves
        chosen["current-again"] = {"compile": "on"}
    if ablations:
        chosen.update({f"current-{name}": settings for name, settings in ABLATIONS.items()})
    if batch_order != "length":  # length grouping leaves little padding to save
        chosen["current-padding-free"] = PADDING_FREE
    return chosen


def timer_callback():
    from torch._dynamo.utils import counters
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall and CPU time and real tokens of every optimizer step after the first, leaving out the steps in
        which torch.compile made a graph: with dynamic shapes a layer compiles again for the first batches of
        new shapes, and those seconds (paid once per run, not per step) made two runs of one compiled
        configuration differ by 17% at 10 steps. The compile seconds are reported apart."""

        def __init__(self):
            self.steps = {}  # step -> {"seconds", "cpu_seconds", "compiled", "tokens"}
            self._seen = 0.0
            self._began = self._cpu_began = 0.0
            self._graphs = 0

        def on_step_begin(self, args, state, control, **kwargs):
            self._graphs = counters["stats"]["unique_graphs"]
            self._began, self._cpu_began = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps[state.global_step] = {
                "seconds": time.perf_counter() - self._began, "cpu_seconds": time.process_time() - self._cpu_began,
                "compiled": counters["stats"]["unique_graphs"] > self._graphs, "tokens": 0.0}

        def on_log(self, args, state, control, logs=None, **kwargs):
            seen = (logs or {}).get("num_tokens")
            if seen is None or state.global_step not in self.steps:
                return
            self.steps[state.global_step]["tokens"] = seen - self._seen
            self._seen = seen

        def totals(self) -> dict:
            timed = [s for step, s in self.steps.items() if step > 1 and not s["compiled"]]
            if not timed:
                raise SystemExit("every timed step compiled a graph: raise --steps")
            total = {key: sum(s[key] for s in timed) for key in ("seconds", "cpu_seconds", "tokens")}
            compiling = [s["seconds"] for step, s in self.steps.items() if step > 1 and s["compiled"]]
            return {**total, "timed_steps": len(timed), "compiling_steps": len(compiling),
                    "compiling_seconds": sum(compiling)}

    return StepTimer()


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
    timed = timer.totals()
    return {"tokens_per_s": timed["tokens"] / timed["seconds"],
            "tokens_per_cpu_s": timed["tokens"] / timed["cpu_seconds"], **timed, "precision": run.precision,
            "losses": [h["loss"] for h in history if "loss" in h and "step" in h], "parameters": params}


def bench_model(model: str, args, peaks: dict, auto: str) -> None:
    from sdft.base.errors import SdftError
    from sdft.models.resolve import resolve_model
    from sdft.train.config import TrainConfig

    try:
        path = str(resolve_model(model))
    except SdftError as exc:
        print(f"{model}: skipped ({exc})", flush=True)
        return
    chosen = setups(auto, args.ablations, args.rounds, args.batch_order)
    if args.setups:
        chosen = {name: (chosen | {"current-padding-free": PADDING_FREE})[name] for name in args.setups.split(",")}
    runs = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            # Odd rounds run in reverse order (ABBA): a machine that speeds up or slows down during the run
            # then weighs on every setup alike rather than on the ones that ran last.
            order = list(chosen) if round_ % 2 == 0 else list(reversed(chosen))
            for name in order:
                config = TrainConfig(model=path, data=args.data, task="math", out=str(Path(tmp) / f"{name}-{round_}"),
                                     limit=args.steps * args.batch_size, max_steps=args.steps, method=args.method,
                                     batch_size=args.batch_size, grad_accum=1, max_length=args.max_length,
                                     batch_order=args.batch_order, save_steps=10**6, logging_steps=10**6,
                                     **chosen[name])
                runs[name].append(measure(config))
    report(model, args, peaks, runs)


def median_run(measured: list[dict]) -> dict:
    """A setup's figures over its rounds: the median rates (losses and parameters of the first round)."""
    return {**measured[0], **{key: statistics.median(m[key] for m in measured)
                              for key in ("tokens_per_s", "tokens_per_cpu_s")}}


def report(model: str, args, peaks: dict, runs: dict) -> None:
    results = {name: median_run(measured) for name, measured in runs.items()}
    first = next(iter(results.values()))
    flops_per_token = (6 if args.method == "full" else 4) * first["parameters"]
    print(f"\n{model} ({first['parameters'] / 1e6:.0f}M matmul parameters), {args.method}, "
          f"{args.steps} steps x batch {args.batch_size} x <= {args.max_length} tokens (first step and steps that "
          f"compiled not timed), {args.rounds} round(s): median over rounds")
    for name, r in results.items():
        # Against the peak of the precision the run used: a CPU without bf16 units emulates bf16 slowly, and
        # dividing an fp32 run by that peak gave MFUs above 100% (issue 27).
        mfu = r["tokens_per_s"] * flops_per_token / peaks[r["precision"]]
        rounds = " ".join(f"{m['tokens_per_s']:.1f}" for m in runs[name])
        print(f"  {name:>12} ({r['precision']}): {r['tokens_per_s']:7.1f} train tokens/s (rounds: {rounds}), "
              f"{r['tokens_per_cpu_s']:7.1f} per CPU-second, MFU {mfu:.1%} ({r['timed_steps']} steps timed, "
              f"{r['compiling_steps']} compiling left out: {r['compiling_seconds']:.0f} s); "
              f"loss {' '.join(f'{x:.4f}' for x in r['losses'])}", flush=True)
    if "current" in results and "current-padding-free" in results:
        free, padded = results["current-padding-free"], results["current"]
        gap = max(abs(x - y) for x, y in zip(padded["losses"], free["losses"]))
        over = (f", {free['tokens_per_s'] / results['previous']['tokens_per_s']:.2f} over previous"
                if "previous" in results else "")
        print(f"  padding-free (current-padding-free / current): {free['tokens_per_s'] / padded['tokens_per_s']:.2f} "
              f"wall{over}; largest loss difference per step from current: {gap:.4f}", flush=True)
    if "previous" not in results or "current" not in results:
        return
    before, after = results["previous"], results["current"]
    gap = max(abs(x - y) for x, y in zip(before["losses"], after["losses"]))
    print(f"  largest loss difference per step: {gap:.4f}")
    print(f"  speedup (CPU time): {after['tokens_per_cpu_s'] / before['tokens_per_cpu_s']:.2f}")
    per_round = " ".join(f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}"
                         for a, b in zip(runs["current"], runs["previous"]))
    print(f"  speedup: {after['tokens_per_s'] / before['tokens_per_s']:.2f} (per round: {per_round})", flush=True)
    for name in ("previous", "current"):
        rates = [m["tokens_per_s"] for m in runs[name]] + (
            [runs["current-again"][0]["tokens_per_s"]] if name == "current" and "current-again" in runs else [])
        if len(rates) > 1:
            spread = max(rates) / min(rates)
            print(f"  repeatability ({name}, fastest / slowest of {len(rates)} runs): {spread:.2f}"
                  f"{'' if spread <= 1.1 else ' -- more than 10% apart: raise --steps or --rounds'}", flush=True)
    other = next((r for name, r in results.items() if name in ("current-fp32", "current-bf16")), None)
    if other is not None:
        print(f"  precision alone (current / current in the other precision, {after['precision']} vs "
              f"{other['precision']}): {after['tokens_per_s'] / other['tokens_per_s']:.2f} wall, "
              f"{after['tokens_per_cpu_s'] / other['tokens_per_cpu_s']:.2f} CPU time", flush=True)
    for name in ABLATIONS:
        if f"current-{name}" in results:
            print(f"  {name} (current / current-{name}): "
                  f"{after['tokens_per_s'] / results[f'current-{name}']['tokens_per_s']:.2f} wall", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct",
                        help="comma-separated aliases or folders")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per setup (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-order", choices=["length", "prompt", "index"], default="length",
                        help="micro-batches of every setup (index: the remedy run's common order, more padding)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every setup this many times, odd rounds in reverse order (ABBA); medians reported")
    parser.add_argument("--setups", default="", help="comma-separated subset, e.g. previous,current")
    parser.add_argument("--ablations", action="store_true",
                        help="also run current without compiling and current with every position's logits")
    args = parser.parse_args()

    import torch

    from sdft.base.hardware import cpu_has_native_bf16
    from sdft.train.speed import auto_precision

    auto = auto_precision(cuda=False)
    peaks = {"bf16": matmul_peak("bfloat16"), "fp32": matmul_peak("float32")}
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}, bf16 units: "
          f"{cpu_has_native_bf16()} (--precision auto: {auto}); measured matmul peak bf16 "
          f"{peaks['bf16'] / 1e9:.0f} GFLOP/s, fp32 "
          f"{peaks['fp32'] / 1e9:.0f} GFLOP/s", flush=True)
    for model in args.models.split(","):
        bench_model(model.strip(), args, peaks, auto)


if __name__ == "__main__":
    main()
