"""What one arm of an experiment costs, end to end: a reduced `sdft run` of the remedy comparison on the Qwen
seed, timed per stage and per part, in each configuration given, side by side in one run.

The run is the main experiment's shape at a small size: the seed evaluated, the training problems distilled,
one SDFT arm trained (LoRA r=16 on every linear layer, 1 epoch), evaluated on GSM8K, AdvBench and HumanEval
(sandboxed), and compared with the seed (answer similarity, the seed answers' NLL, weight shift). Every
configuration starts from an empty run folder and an empty `$SDFT_HOME` cache (merged copies, replay
answers), so nothing one configuration made is reused by the next; the model is the one folder for all.

Per part, time is *exclusive* (a part inside another is taken out of it): model load (torch), merged copy,
engine start and release, generation per task, scoring per task (HumanEval: the sandbox), training steps,
seed-answer NLL, similarity, weight shift, report; "other" is a stage's wall time not in any part (writing,
tokenizing, Python). Throughput: generated + prompt tokens per second of generation, training tokens per
second, prompt + answer tokens per second of the seed-answer NLL pass (counted with the seed's tokenizer); MFU
against the matmul peak measured now, in the precision the run used (the torch NLL pass: fp32). Equal answers:
the greedy answers and per-item scores of every configuration are compared with the first's.

    .venv/bin/python benchmarks/bench_arm.py [--configs previous,current] [--model qwen2.5-coder-0.5b-instruct]
        [--train 32] [--items 48] [--repeat 1] [--out bench-arm]   # prints a table, writes <out>/bench-arm.json

Run it on a quiet machine: two heavy jobs at once slow both about 4x. The CPU's bf16 support is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mfu import DTYPES, matmul_parameters, matmul_peak

SHARED = ROOT.parent / "shared" / "data" / "sdft-paper"

# The configurations compared: settings laid over the base run config ("section.key": value) and module
# attributes set for the run ("module:attribute": value). "previous" is the experiment as issue 27 found it
# (merged copies in fp32, the seed answers' NLL by a torch pass in fp32, one task and one chunk of prompts at a
# time, one core kept from vLLM's compute threads); "current": the seed answers' NLL in the engine, every task's
# answers and every problem's rewrite in one stream, on a small CPU every core computing, and training without
# padding (the bf16 remedy run keeps the streams off, the core reserved and its batches padded, so that all its
# models are made one way; the fp32 run has all of "current"). Padding-free training changes the trained
# model's weights by float rounding, so its answers may differ from "previous" in a few items: the benchmark
# counts the differences per stage and task.
CONFIGS = {
    "previous": {"sdft.generation.vllm_backend:_STORED_DTYPES": (), "eval.stream_answers": False,
                 "distill.stream_answers": False, "eval.backend_option": ["reserved_cpus=1"],
                 "distill.backend_option": ["reserved_cpus=1"]},
    "current": {"shift.likelihood_backend": "vllm", "eval.stream_answers": True, "distill.stream_answers": True,
                "train.padding_free": True},
}
# "current" in a given precision, whatever --precision pins for the others: what the precision alone is worth on
# this CPU for a whole arm, in the same run (its answers differ from the others' by the precision's rounding).
CONFIGS |= {f"current-{precision}": {**CONFIGS["current"], "precision": precision} for precision in ("bf16", "fp32")}

# (module, attribute, part). A class attribute is "module:Class.method". Parts may nest; time is exclusive.
PARTS = [
    ("sdft.models.resolve", "load_model_and_tokenizer", "model load (torch)"),
    ("sdft.generation.vllm_backend", "merged_copy", "merged copy"),
    ("sdft.generation.vllm_backend", "_engine", "engine start"),
    ("sdft.generation.vllm_backend", "shutdown_engine", "engine release"),
    ("sdft.evaluate.run", "_generate", "generation"),
    ("sdft.evaluate.run", "stream_answers", "generation: every task, one stream"),
    ("sdft.distill.stage", "_generate_pending", "generation"),
    ("sdft.evaluate.run", "_score", "scoring"),
    ("transformers", "Trainer.train", "training steps"),
    ("sdft.compare.likelihood", "seed_likelihood", "seed-answer NLL"),
    ("sdft.compare.answers", "text_similarity", "similarity"),
    ("sdft.compare.weights", "parameter_shift", "weight shift"),
    ("sdft.report.stage", "write_report", "report"),
]


class Clock:
    """Exclusive wall time per (stage, part) on the main thread; parts called from worker threads are counted
    inside the main-thread part that waits for them."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.stack: list[list] = []  # [label, began, child seconds]
        self.stage = "setup"

    @contextlib.contextmanager
    def part(self, label: str):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        frame = [label, time.perf_counter(), 0.0]
        self.stack.append(frame)
        try:
            yield
        finally:
            self.stack.pop()
            spent = time.perf_counter() - frame[1]
            self.seconds[(self.stage, label)] += spent - frame[2]
            if self.stack:
                self.stack[-1][2] += spent


CLOCK = Clock()
# Tokens the seed-answer NLL pass ran through the model (prompt + answer, per call), per stage: its MFU's numerator.
NLL_TOKENS: defaultdict = defaultdict(int)
TOKENIZER = []  # the seed's tokenizer, set by main(): counts what the NLL pass scored


def scored_tokens(args: tuple, kwargs: dict) -> int:
    """Prompt + answer tokens of one ``seed_likelihood(model, tokenizer, prompts, texts, ...)`` call."""
    prompts = kwargs.get("prompts", args[2] if len(args) > 2 else ())
    texts = kwargs.get("texts", args[3] if len(args) > 3 else ())
    encode = TOKENIZER[0]
    return sum(len(encode(prompt + text, add_special_tokens=False)["input_ids"])
               for prompt, text in zip(prompts, texts))


def _task_label(label: str, args: tuple) -> str:
    """generation / scoring carry the task's name (their first argument) when it is a string."""
    if label in ("generation", "scoring") and args:
        name = args[0] if isinstance(args[0], str) else getattr(args[0], "name", None)
        if isinstance(name, str):
            return f"{label}: {name}"
    return label


def instrument(clock: Clock) -> None:
    """Wrap each part's function where it is defined and wherever a module imported it by name."""
    import importlib

    for module_name, attribute, label in PARTS:
        module = importlib.import_module(module_name)
        owner_name, _, method = attribute.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        original = getattr(owner, method)

        def timed(*args, __original=original, __label=label, **kwargs):
            with clock.part(_task_label(__label, args)):
                result = __original(*args, **kwargs)
            if __label == "seed-answer NLL" and TOKENIZER:  # counted outside the part's time
                NLL_TOKENS[clock.stage] += scored_tokens(args, kwargs)
            return result

        setattr(owner, method, timed)
        if not owner_name:  # `from module import function` copies elsewhere
            for other in list(sys.modules.values()):
                if getattr(other, "__name__", "").startswith("sdft") and getattr(other, method, None) is original:
                    setattr(other, method, timed)


def stage_of(folder: Path, run_dir: Path) -> str:
    """"eval/seed", "distill", "train/sdft", "compare/sdft": the stage kind and the model, without keys."""
    parts = folder.relative_to(run_dir).parts
    if not parts:
        return str(folder)
    kind = "compare" if "compare" in parts else parts[0]
    model = parts[1].rsplit("-", 1)[0] if len(parts) > 1 else ""
    return f"{kind}/{model}" if model and kind != "distill" else kind


def run_config(name: str, model: str, args, out_root: Path) -> dict:
    precision = CONFIGS[name].get("precision", args.precision)
    config = {
        "name": name, "model": model, "data": str(SHARED / "gsm8k_train.json"), "task": "math",
        "system_prompt": "model", "out_root": str(out_root),
        "distill": {"limit": args.train, "batch_size": 64, "max_new_tokens": 384, "backend": "vllm",
                    "precision": precision},
        "train": {"epochs": 1, "batch_size": 4, "grad_accum": 2, "max_length": 640, "learning_rate": 1e-4,
                  "lr_scheduler": "cosine", "warmup_ratio": 0.03, "lora_r": 16, "lora_alpha": 32,
                  "lora_targets": ["all-linear"], "batch_order": "index", "precision": precision,
                  "save_steps": 10**6, "logging_steps": 1},
        "eval": {"tasks": args.tasks.split(","), "data": [f"gsm8k={SHARED / 'gsm8k_test.json'}"],
                 "limit": args.items, "max_new_tokens": 384, "batch_size": 64, "backend": "vllm",
                 "precision": precision},
        "shift_tasks": ["advbench"], "arms": ["sdft"], "mix_ratios": [1.0],
    }
    for dotted, value in CONFIGS[name].items():
        if ":" not in dotted and dotted != "precision":
            section, _, key = dotted.rpartition(".")
            (config.setdefault(section, {}) if section else config)[key] = value
    return config


@contextlib.contextmanager
def patched(name: str):
    """The configuration's module attributes set for the duration of its run."""
    import importlib

    saved = []
    for target, value in CONFIGS[name].items():
        if ":" in target:
            module_name, attribute = target.split(":")
            module = importlib.import_module(module_name)
            saved.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, value)
    try:
        yield
    finally:
        for module, attribute, value in saved:
            setattr(module, attribute, value)


def measure(name: str, model: str, args, out: Path) -> dict:
    """One configuration's whole run, in a fresh cache; returns per-stage and per-part seconds."""
    from sdft.base.config import from_dict
    from sdft.experiment import pipeline
    from sdft.experiment.config import RunConfig
    from sdft.generation import release_engines

    clock = CLOCK
    clock.seconds.clear()
    NLL_TOKENS.clear()
    stages: dict[str, float] = {}
    original_run_stage = pipeline.run_stage

    def run_stage(folder, *a, **k):
        clock.stage = stage_of(Path(folder), run_dir)
        began = time.perf_counter()
        try:
            return original_run_stage(folder, *a, **k)
        finally:
            stages[clock.stage] = stages.get(clock.stage, 0.0) + time.perf_counter() - began
            clock.stage = "between stages"

    config = from_dict(RunConfig, run_config(name, model, args, out), f"bench config {name}")
    run_dir = config.run_dir
    pipeline.run_stage = run_stage
    began = time.perf_counter()
    try:
        with patched(name):
            pipeline.run(config, log=lambda line: print(f"  [{name}] {line}", flush=True))
    finally:
        pipeline.run_stage = original_run_stage
        release_engines()
    wall = time.perf_counter() - began
    return {"wall_s": wall, "stages": stages, "parts": {f"{s} | {p}": v for (s, p), v in clock.seconds.items()},
            "run_dir": str(run_dir), "seed_nll": seed_nll(run_dir), "nll_tokens": sum(NLL_TOKENS.values()),
            **throughput(run_dir)}


def seed_nll(run_dir: Path) -> dict:
    """The seed answers' mean NLL under the trained model and under the seed, as the comparison scored them."""
    for path in run_dir.rglob("compare/answer_shift.json"):
        scored = json.loads(path.read_text()).get("seed_likelihood") or {}
        return {"model": scored.get("mean_nll"), "seed": (scored.get("reference") or {}).get("mean_nll"),
                "scorer": scored.get("scorer", {"backend": "hf"})}
    return {}


def throughput(run_dir: Path) -> dict:
    """Tokens generated and trained, read back from what the run wrote."""
    generated = prompt = 0
    for path in run_dir.rglob("generations/*.jsonl"):
        for line in path.open():
            record = json.loads(line)
            generated += int(record.get("completion_tokens") or 0)
            prompt += int(record.get("prompt_tokens") or 0)
    trained = 0.0
    for path in run_dir.rglob("train.json"):
        record = json.loads(path.read_text())
        trained += (record.get("throughput") or {}).get("tokens_this_session") or 0
    return {"generated_tokens": generated, "prompt_tokens": prompt, "trained_tokens": trained}


def answers(run_dir: Path) -> dict:
    """Every generated answer and per-item score, by (stage folder without its key, task, id): the keys of the
    trained model's folders name the run folder they lie in, which differs between configurations."""
    found = {}
    for path in sorted(run_dir.rglob("generations/*.jsonl")):
        kind = stage_of(path.parent.parent, run_dir)
        for line in path.open():
            r = json.loads(line)
            found[(kind, path.stem, r["id"])] = (r.get("completion"), r.get("score"))
    return found


def compare_answers(first: dict, other: dict) -> str:
    """How many answers differ in text and in score, per stage folder and task."""
    keys = sorted(set(first) | set(other))
    differ = defaultdict(lambda: [0, 0, 0])
    for key in keys:
        a, b = first.get(key, (None, None)), other.get(key, (None, None))
        counts = differ[f"{key[0]} {key[1]}"]
        counts[0] += 1
        counts[1] += a[0] != b[0]
        counts[2] += a[1] != b[1]
    parts = [f"{where}: {n} answers, {text} differ in text, {score} in score" for where, (n, text, score) in differ.items()]
    return "; ".join(parts)


def print_table(results: dict, params: int, peaks: dict) -> None:
    names = list(results)
    rows = sorted({k for r in results.values() for k in r["parts"]} | {f"{s} | (stage total)" for r in results.values()
                                                                        for s in r["stages"]})
    print(f"\n| stage | part | {' | '.join(names)} |")
    print(f"|---|---|{'---|' * len(names)}")
    for row in rows:
        stage, part = row.split(" | ")
        cells = []
        for n in names:
            r = results[n]
            value = r["stages"].get(stage) if part == "(stage total)" else r["parts"].get(row)
            cells.append("" if value is None else f"{value:.1f}")
        print(f"| {stage} | {part} | {' | '.join(cells)} |")
    walls = " | ".join(f"**{results[n]['wall_s']:.1f}**" for n in names)
    print(f"| **arm** | **wall** | {walls} |")
    for n in names:
        r = results[n]
        gen_s = sum(v for k, v in r["parts"].items() if "| generation" in k)
        train_s = sum(v for k, v in r["parts"].items() if "| training steps" in k)
        tokens = r["generated_tokens"] + r["prompt_tokens"]
        gen_rate = tokens / gen_s if gen_s else 0
        train_rate = r["trained_tokens"] / train_s if train_s else 0
        peak = peaks[r["precision"]]  # MFU against the peak of the precision this configuration ran in
        print(f"{n} ({r['precision']}): generation {gen_rate:.0f} tok/s (prompt + new; {r['generated_tokens']} new), "
              f"MFU {gen_rate * 2 * params / peak:.1%}; training {train_rate:.0f} tok/s, "
              f"MFU {train_rate * 4 * params / peak:.1%}")
        nll_s = sum(v for k, v in r["parts"].items() if "| seed-answer NLL" in k)
        if nll_s and r.get("nll_tokens"):
            # The torch scorer runs in fp32 on a CPU whatever the run's precision; the engine's in the run's.
            nll_precision = "fp32" if (r.get("seed_nll") or {}).get("scorer", {}).get("backend") == "hf" \
                else r["precision"]
            nll_rate = r["nll_tokens"] / nll_s
            print(f"{n} seed-answer NLL ({nll_precision}): {nll_rate:.0f} tok/s (prompt + answer, "
                  f"{r['nll_tokens']} tokens), MFU {nll_rate * 2 * params / peaks[nll_precision]:.1%}")
    walls = defaultdict(list)  # per configuration, over its repeats ("current", "current#2", ...)
    for n in names:
        walls[n.split("#")[0]].append(results[n]["wall_s"])
    for name, seconds in walls.items():
        if len(seconds) > 1:
            print(f"repeatability {name}: {', '.join(f'{s:.0f}' for s in seconds)} s; the slowest "
                  f"{max(seconds) / min(seconds) - 1:.1%} above the fastest")
    first, *others = walls
    for name in others:
        mean = sum(walls[name]) / len(walls[name])
        print(f"speed-up {name} vs {first}: {sum(walls[first]) / len(walls[first]) / mean:.2f}x"
              + (f" (means of {len(walls[name])} runs each)" if len(walls[name]) > 1 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="previous,current", help=f"of: {', '.join(CONFIGS)}")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--train", type=int, default=32, help="training problems (distilled, then trained on)")
    parser.add_argument("--items", type=int, default=48, help="items per evaluation task")
    parser.add_argument("--tasks", default="gsm8k,advbench,humaneval")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="pinned for every stage; auto: what sdft train picks here (bf16 where the CPU's bf16 "
                             "units measured faster than fp32, else fp32)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the configuration list, interleaved")
    parser.add_argument("--out", default="bench-arm")
    args = parser.parse_args()

    import torch

    from sdft.base.hardware import cpu_has_native_bf16
    from sdft.models.resolve import resolve_model
    from sdft.train.speed import auto_precision

    if args.precision == "auto":  # resolved here, so that every stage and the peak name the same precision
        args.precision = auto_precision(cuda=False)
    model = str(resolve_model(args.model))
    from transformers import AutoTokenizer
    TOKENIZER.append(AutoTokenizer.from_pretrained(model))
    peaks = {precision: matmul_peak(dtype) for precision, dtype in DTYPES.items()}
    params = matmul_parameters(model)
    print(f"machine: {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, bf16 units: "
          f"{cpu_has_native_bf16()}; torch {torch.__version__}; matmul peak fp32 {peaks['fp32'] / 1e9:.0f}, bf16 "
          f"{peaks['bf16'] / 1e9:.0f} GFLOP/s; precision {args.precision} (--precision auto here: "
          f"{auto_precision(cuda=False)}); {args.model}: {params / 1e6:.0f}M matmul parameters", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    instrument(CLOCK)
    results, first = {}, None
    runs = [(name, name + (f"#{r + 1}" if r else "")) for r in range(args.repeat) for name in args.configs.split(",")]
    for name, label in runs:
        home = out / label  # the run folder stays, to be read; its caches (merged copies) are removed after
        if home.exists():
            shutil.rmtree(home)
        os.environ["SDFT_HOME"] = str(home / "sdft-home")  # caches start empty for each configuration
        results[label] = measure(name, model, args, home / "runs")
        results[label]["precision"] = CONFIGS[name].get("precision", args.precision)
        shutil.rmtree(home / "sdft-home", ignore_errors=True)
        found = answers(Path(results[label]["run_dir"]))
        first = first or found
        results[label]["answers"] = compare_answers(first, found)
        print(f"  [{label}] {results[label]['wall_s']:.0f} s; vs the first configuration: "
              f"{results[label]['answers']}; seed answers' mean NLL {results[label]['seed_nll']}", flush=True)
        # After every configuration: a later one that fails leaves the finished ones' figures (and their table).
        (out / "bench-arm.json").write_text(json.dumps({"peak_flops": peaks, "parameters": params,
                                                        "bf16_units": cpu_has_native_bf16(), "results": results},
                                                       indent=1))
    # A peak measured while the host is busy for a moment inflates every MFU: measured again at the end, the
    # larger of the two counts (both kept in the JSON).
    again = {precision: matmul_peak(dtype) for precision, dtype in DTYPES.items()}
    print(f"matmul peak at the end: fp32 {again['fp32'] / 1e9:.0f}, bf16 {again['bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    peaks = {precision: max(peaks[precision], again[precision]) for precision in peaks}
    (out / "bench-arm.json").write_text(json.dumps({"peak_flops": peaks, "peak_flops_at_end": again,
                                                    "parameters": params, "bf16_units": cpu_has_native_bf16(),
                                                    "results": results}, indent=1))
    print_table(results, params, peaks)


if __name__ == "__main__":
    main()
