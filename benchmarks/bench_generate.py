"""Generation throughput: one prompt at a time (how the paper's code distils) vs our batched backend.

Both runs use the same model object, the same 32 chat-rendered prompts and greedy decoding with the same
``max_new_tokens``; only the batch size differs. Prints new tokens/s of each and ``speedup: N.NN``.

    .venv/bin/python benchmarks/bench_generate.py [--model M] [--n-prompts 32] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    import torch

    from sdft.generation import GenerationParams
    from sdft.generation.hf import HFBackend
    from sdft.models import resolve_model
    from sdft.templates import PROMPT_TEMPLATES, render

    backend = HFBackend(resolve_model(args.model), progress=False)
    instructions = (INSTRUCTIONS * (args.n_prompts // len(INSTRUCTIONS) + 1))[:args.n_prompts]
    prompts = [render(PROMPT_TEMPLATES["alpaca"], text, tokenizer=backend.tokenizer, mode="chat")
               for text in instructions]
    backend.generate(prompts[:2], GenerationParams(max_new_tokens=4, batch_size=2))  # warm-up

    def timed(batch_size: int):
        params = GenerationParams(max_new_tokens=args.max_new_tokens, batch_size=batch_size)
        start = time.perf_counter()
        if batch_size == 1:  # the paper's loop: one generate() call per prompt
            completions = [backend.generate([p], params)[0] for p in prompts]
        else:
            completions = backend.generate(prompts, params)
        seconds = time.perf_counter() - start
        tokens = sum(c.completion_tokens for c in completions)
        print(f"batch {batch_size:>3}: {tokens} new tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s",
              flush=True)
        return completions, tokens / seconds

    # Other processes on the machine slow both runs (the one-by-one loop more); the load shows how quiet it was.
    print(f"model {args.model}, {len(prompts)} prompts, greedy, max_new_tokens {args.max_new_tokens}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    sequential, slow = timed(1)
    batched, fast = timed(args.batch_size)
    same = sum(a.text == b.text for a, b in zip(sequential, batched))
    print(f"identical completions: {same}/{len(prompts)} (batched fp32 arithmetic may flip a near-tie)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"speedup: {fast / slow:.2f}")


if __name__ == "__main__":
    main()
