"""Generation throughput side by side, in one run, on the same chat prompts (greedy, same budget):

* HF fp32 batch 1 (one generate() call per prompt: how the paper's code distils);
* HF fp32 batched and HF bf16 batched (our transformers backend);
* vLLM in-process through our backend (``--backend vllm``, the precision ``auto`` picks) and vLLM called
  directly (``vllm.LLM.generate`` on the same token ids: the ceiling for our wrapper);
* a real ``vllm serve`` on 127.0.0.1 reached through ``--backend openai``.

Each at 32 and 128 prompts (batch 1 only on the first --batch1-prompts: its rate does not depend on the
count). Prints new tokens/s of each and its ratio to HF fp32 batched at the same prompt count, plus our
vLLM path vs vLLM direct. Engine start-up is timed apart and not in the rates.

    .venv/bin/python benchmarks/bench_generate.py [--model M] [--counts 32,128] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
import urllib.request

INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "Explain photosynthesis to a ten-year-old.",
    "Write a haiku about autumn leaves.",
    "What are the main causes of inflation?",
    "Describe the water cycle in a few sentences.",
    "Suggest a name for a bakery that specialises in sourdough bread.",
    "How do I make a cup of green tea?",
    "Summarise the plot of Romeo and Juliet.",
    "List five countries in South America and their capitals.",
    "What is the difference between weather and climate?",
    "Write a short, polite email declining a meeting invitation.",
    "Explain what a binary search does.",
    "Why is the sky blue?",
    "Give me a simple recipe for pancakes.",
    "What are the benefits of regular exercise?",
    "Translate 'Good morning, how are you?' into French.",
    "Explain the rules of chess in brief.",
    "Write a Python function that reverses a string.",
    "What should I pack for a weekend hiking trip?",
    "Describe the role of the heart in the human body.",
    "How can I improve my sleep?",
    "Name three famous painters and one work by each.",
    "What is machine learning, in plain words?",
    "Write a motivational sentence for a student before an exam.",
    "Explain how a bicycle stays upright while moving.",
    "What are renewable energy sources? Give examples.",
    "Describe a sunset over the ocean.",
    "How does a refrigerator keep food cold?",
    "Give two arguments for and against working from home.",
    "What is the Pythagorean theorem?",
    "Suggest three indoor activities for a rainy day.",
    "Explain why we have seasons on Earth.",
]


def prompts_for(model_folder: str, count: int) -> list[str]:
    from sdft.base.templates import PROMPT_TEMPLATES, render
    from sdft.models.resolve import load_tokenizer

    tokenizer = load_tokenizer(model_folder)
    texts = [f"{INSTRUCTIONS[i % len(INSTRUCTIONS)]}" + (f" (variant {i // len(INSTRUCTIONS)})" if i >= len(
        INSTRUCTIONS) else "") for i in range(count)]
    return [render(PROMPT_TEMPLATES["alpaca"], text, tokenizer=tokenizer, mode="chat") for text in texts]


def timed(label: str, count: int, run) -> dict:
    start = time.perf_counter()
    completions = run()
    seconds = time.perf_counter() - start
    tokens = sum(c.completion_tokens for c in completions)
    row = {"label": label, "prompts": count, "tokens": tokens, "seconds": seconds, "rate": tokens / seconds,
           "texts": [c.text for c in completions]}
    print(f"{label:<28} {count:>4} prompts: {tokens:>6} new tokens in {seconds:7.1f} s = {row['rate']:7.1f} tok/s",
          flush=True)
    return row


def bench_hf(folder: str, prompts: dict, args, rows: list) -> None:
    from sdft.generation import GenerationParams
    from sdft.generation.hf import HFBackend

    for precision in ("fp32", "bf16"):
        backend = HFBackend(folder, precision=precision, progress=False)
        backend.generate(prompts[min(prompts)][:2], GenerationParams(max_new_tokens=4, batch_size=2))  # warm-up
        params = GenerationParams(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        if precision == "fp32":
            first = prompts[min(prompts)][:args.batch1_prompts]
            rows.append(timed("HF fp32 batch 1", len(first),
                              lambda: [backend.generate([p], params)[0] for p in first]))
        for count, batch in sorted(prompts.items()):
            if args.hf_counts and count not in args.hf_counts:
                continue
            rows.append(timed(f"HF {precision} batch {args.batch_size}", count,
                              lambda: backend.generate(batch, params)))
        backend = None  # the weights go before the next precision loads its own


def bench_vllm(folder: str, prompts: dict, args, rows: list) -> str:
    from vllm import SamplingParams

    from sdft.generation import GenerationParams, load_backend
    from sdft.generation.auto import generation_precision
    from sdft.generation.prompts import encode_prompts
    from sdft.generation.vllm_backend import shutdown_engine

    precision = generation_precision("auto", "vllm")
    began = time.perf_counter()
    backend = load_backend("vllm", folder, None, progress=False, precision=precision, enforce_eager=args.eager)
    print(f"vLLM engine ({backend.dtype}{', eager' if args.eager else ''}) started in "
          f"{time.perf_counter() - began:.0f} s", flush=True)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, max_prompt_tokens=4096)
    backend.generate(prompts[min(prompts)][:2], GenerationParams(max_new_tokens=4))  # warm-up
    for count, batch in sorted(prompts.items()):
        rows.append(timed(f"vLLM in-process (ours, {precision})", count, lambda: backend.generate(batch, params)))
        ids = encode_prompts(backend.tokenizer, batch, params.max_prompt_tokens)[0]
        plain = SamplingParams(max_tokens=args.max_new_tokens, temperature=0.0)

        def direct():
            outs = backend.llm.generate([{"prompt_token_ids": i} for i in ids], plain, use_tqdm=False)
            return [Direct(len(o.outputs[0].token_ids)) for o in outs]
        rows.append(timed(f"vLLM direct ({precision})", count, direct))
    shutdown_engine()
    return backend.dtype


class Direct:
    def __init__(self, tokens: int):
        self.completion_tokens, self.text = tokens, None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_server(folder: str, dtype: str, prompts: dict, args, rows: list) -> None:
    from sdft.generation import GenerationParams, load_backend
    from sdft.generation.engine_processes import serve_command

    port, name = _free_port(), "bench-model"
    command = serve_command(folder, port, name, dtype=dtype, eager=args.eager)
    began = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit("vllm serve exited before it was ready")
            try:
                urllib.request.urlopen(url + "/models", timeout=5).read()
                break
            except OSError:
                time.sleep(2)
        print(f"vLLM server ({dtype}) ready in {time.perf_counter() - began:.0f} s", flush=True)
        backend = load_backend("openai", name, None, progress=False, endpoint=[url], max_concurrency=256,
                               tokenizer=folder)
        params = GenerationParams(max_new_tokens=args.max_new_tokens, max_prompt_tokens=4096)
        backend.generate(prompts[min(prompts)][:2], GenerationParams(max_new_tokens=4))  # warm-up
        for count, batch in sorted(prompts.items()):
            rows.append(timed("vLLM server (openai backend)", count, lambda: backend.generate(batch, params)))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=120)


def report(rows: list) -> None:
    base = {r["prompts"]: r["rate"] for r in rows if r["label"].startswith("HF fp32 batch ") and
            r["label"] != "HF fp32 batch 1"}
    print(f"\n{'setup':<30} {'prompts':>7} {'tok/s':>8} {'x HF fp32 batched':>18}")
    for r in rows:
        # Batch 1 (and counts left out by --hf-counts) are compared with the smallest HF batched run.
        ref = base.get(r["prompts"]) or (base[min(base)] if base else None)
        ratio = f"{r['rate'] / ref:.2f}" if ref else "n/a"
        print(f"{r['label']:<30} {r['prompts']:>7} {r['rate']:>8.1f} {ratio:>18}")
    ours = {r["prompts"]: r["rate"] for r in rows if r["label"].startswith("vLLM in-process")}
    direct = {r["prompts"]: r["rate"] for r in rows if r["label"].startswith("vLLM direct")}
    for count in sorted(set(ours) & set(direct)):
        print(f"ours / vLLM direct at {count} prompts: {ours[count] / direct[count]:.2f}")
    hf_rows = [r for r in rows if r["label"].startswith("HF fp32 batch ") and r["label"] != "HF fp32 batch 1"]
    vllm_rows = {r["prompts"]: r for r in rows if r["label"].startswith("vLLM in-process")}
    for r in hf_rows:
        if r["prompts"] in vllm_rows:
            same = sum(a == b for a, b in zip(r["texts"], vllm_rows[r["prompts"]]["texts"]))
            print(f"identical greedy answers, HF fp32 vs vLLM, {r['prompts']} prompts: {same}/{r['prompts']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--counts", default="32,128", help="prompt counts, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32, help="HF batch size")
    parser.add_argument("--batch1-prompts", type=int, default=16, help="prompts for the batch-1 run")
    parser.add_argument("--hf-counts", default="", help="prompt counts for the HF batched runs (default: --counts); "
                        "other counts are compared with the smallest (HF runs them as the same batches in turn)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation (starts faster)")
    parser.add_argument("--skip", default="", help="comma-separated: hf, vllm, server")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    args.hf_counts = {int(n) for n in args.hf_counts.split(",") if n}

    import torch

    from sdft.base.hardware import cpu_prefers_bf16
    from sdft.generation.auto import cpu_bf16_support
    from sdft.models.resolve import resolve_model

    folder = resolve_model(args.model)
    prompts = {int(n): prompts_for(folder, int(n)) for n in args.counts.split(",")}
    print(f"model {args.model}, greedy, max_new_tokens {args.max_new_tokens}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads, CPU bf16: {cpu_bf16_support()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows: list = []
    if "hf" not in skip:
        bench_hf(folder, prompts, args, rows)
    dtype = "bfloat16" if cpu_prefers_bf16() else "float32"  # what --precision auto gives vLLM here
    if "vllm" not in skip:
        dtype = bench_vllm(folder, prompts, args, rows)
    if "server" not in skip:
        bench_server(folder, dtype, prompts, args, rows)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    report(rows)


if __name__ == "__main__":
    main()
