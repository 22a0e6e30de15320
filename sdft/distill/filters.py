"""Distillation filters: decide whether the seed model's rewrite replaces the original response.

``make_filter(kind, mode, **options)`` returns ``filter_fn(example, completion, prompt) -> Decision``.
Every decision carries one reason from :data:`FILTER_REASONS` (a plug-in may add its own), so the
distillation stats can count why rewrites were kept or dropped.

``mode="default"`` (ours): common rules first (``empty``, ``banned_phrase``, ``truncated``,
``copied_prompt``), then the kind's check. ``mode="paper"`` reproduces the reference code exactly
(github.com/sail-sg/sdft, eval/gen_distilled_data.py): only the ban list (on the stripped rewrite, its
"Your turn" prefix test case-sensitive) and the paper's math / call / code rule. It accepts empty and
truncated rewrites, as the reference code does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sdft import sandbox
from sdft.base import answers
from sdft.base.data import Example
from sdft.base.errors import ConfigError, SdftError
from sdft.base.plugins import import_target
from sdft.generation import Completion

FILTER_REASONS: dict[str, str] = {
    "accepted": "the rewrite passed every check and replaces the original response",
    "empty": "the rewrite is empty or only whitespace",
    "banned_phrase": "the rewrite contains a phrase of the paper's ban list (it talks about the reference "
                     "or the task instead of answering) or starts with 'Your turn'",
    "truncated": "generation stopped at max_new_tokens (finish reason 'length'): the rewrite is cut off",
    "copied_prompt": "the rewrite repeats the prompt or the instruction, or echoes the '### Instruction:' "
                     "scaffold, instead of answering (repeating the reference is fine)",
    "no_answer": "math: no final number in the rewrite (or none in the reference to compare with)",
    "answer_mismatch": "math: the rewrite's final number differs from the reference's",
    "no_call": "function_call: no parsable call in the rewrite (or none in the reference)",
    "call_mismatch": "function_call: the reference's call (name and argument values) is not in the rewrite",
    "no_code_block": "code: the rewrite has no ```python (or untagged ```) code block",
    "code_failed": "code: the extracted code failed the example's tests in the sandbox (or timed out)",
    "code_heuristic": "code, no tests: the paper's heuristic failed (the answer must open with 'I have', "
                      "'Here is' or 'I implemented')",
    "plugin_rejected": "a user filter (module:function) returned False without a reason",
}
KINDS = ("general", "math", "function_call", "code")
MODES = ("default", "paper")
BAN_LIST = ("reference answer", "your response", "my response", "your own response", "now it's your turn")

ACCEPTED_REASON = "accepted"


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str
    detail: str = ""


FilterFn = Callable[[Example, Completion, str], Decision]
# A kind's check: (example, rewrite text) -> a rejecting Decision, or None when the rewrite passes.
_Check = Callable[[Example, str], "Decision | None"]
_ACCEPT = Decision(True, ACCEPTED_REASON)
_SCAFFOLD = re.compile(r"#+\s*instruction\s*:", re.I)


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _banned(text: str, paper: bool) -> str | None:
    """The ban-list hit, if any. Default mode also straightens curly apostrophes and ignores case in
    the "Your turn" opening; paper mode is the reference code's ``verify`` as written."""
    text = text.strip()
    lowered = text.lower() if paper else text.replace("\u2019", "'").lower()
    for phrase in BAN_LIST:
        if phrase in lowered:
            return phrase
    opening = text if paper else text.casefold()
    return "starts with 'Your turn'" if opening.startswith("Your turn" if paper else "your turn") else None


def _copied_prompt(example: Example, text: str, prompt: str) -> str | None:
    """Why the rewrite only repeats the prompt, or None. Copying the reference is fine in SDFT."""
    rewrite = _norm(text)
    if rewrite == _norm(example.response):
        return None
    if _SCAFFOLD.match(text.lstrip()):
        return "echoes the '### Instruction:' scaffold"
    if rewrite == _norm(example.instruction):
        return "repeats the instruction"
    if rewrite == _norm(prompt):
        return "repeats the prompt"
    # Made only of prompt text (reference removed) and long enough to be more than a quoted option:
    # "Options: yes / it is not possible to tell / no" answered "it is not possible to tell" stays.
    reference = example.response.strip()
    without_reference = _norm(prompt.replace(reference, " ") if reference else prompt)
    if len(rewrite) >= max(20, len(_norm(example.instruction)) // 2) and rewrite in without_reference:
        return "copies a passage of the prompt"
    return None


def _common(example: Example, completion: Completion, prompt: str, paper: bool) -> Decision | None:
    text = completion.text
    if paper:
        hit = _banned(text, paper=True)
        return Decision(False, "banned_phrase", hit) if hit else None
    if not text.strip():
        return Decision(False, "empty")
    hit = _banned(text, paper=False)
    if hit:
        return Decision(False, "banned_phrase", hit)
    if completion.finish_reason == "length":
        return Decision(False, "truncated", f"{completion.completion_tokens} tokens")
    why = _copied_prompt(example, text, prompt)
    return Decision(False, "copied_prompt", why) if why else None


def _math_check(paper: bool) -> _Check:
    def check(example: Example, text: str) -> Decision | None:
        if paper:
            if answers.paper_math_match(text, example.response):
                return None
            return Decision(False, "answer_mismatch", f"last integer {answers.paper_last_integer(text.strip())!r} vs "
                            f"{answers.paper_last_integer(example.response.strip())!r}")
        ok, why = answers.math_match(text, example.response)
        if ok:
            return None
        if why == "mismatch":
            return Decision(False, "answer_mismatch", f"rewrite {answers.final_number(text)} vs reference "
                            f"{answers.final_number(example.response)}")
        return Decision(False, "no_answer", "no number in the reference" if why == "no_answer_in_reference" else "")
    return check


def _call_check(paper: bool, signatures) -> _Check:
    def check(example: Example, text: str) -> Decision | None:
        if paper:
            return None if answers.paper_call_match(text, example.response) else Decision(False, "call_mismatch")
        # Parameter order from the OpenFunctions instruction text ("Parameters: 1. a 2. b"), overridden
        # by the record's own schema (BFCL "function"), overridden by the user's option.
        known = answers.signatures_from_instruction(example.instruction)
        for key in ("function", "functions"):
            schemas = example.source.get(key)
            if schemas:
                known.update(answers.param_orders(schemas if isinstance(schemas, list) else [schemas]))
        known.update(answers.param_orders(signatures))
        ok, why = answers.calls_match(text, example.response, known)
        if ok:
            return None
        return Decision(False, "no_call" if why.startswith("no_call") else "call_mismatch", why)
    return check


def _tests_of(source: dict) -> dict | None:
    """Test arguments for ``check_program`` from a HumanEval- or MBPP-shaped record, if it has tests."""
    if source.get("test") and source.get("entry_point"):
        return {"tests": source["test"], "entry_point": source["entry_point"]}
    if source.get("test_list"):
        setup = [source.get("test_setup_code") or "", *(source.get("test_imports") or [])]
        return {"tests": source["test_list"], "setup": "\n".join(setup)}
    return None


def _code_check(paper: bool, run_tests: bool, timeout_s: float, memory_mb: int) -> _Check:
    def heuristic(text: str) -> Decision | None:
        if answers.paper_code_heuristic(text):
            return None
        reason = "no_code_block" if "```python" not in text else "code_heuristic"
        return Decision(False, reason, text.strip()[:40])

    def check(example: Example, text: str) -> Decision | None:
        tests = None if paper or not run_tests else _tests_of(example.source)
        if tests is None:
            return heuristic(text)
        code = answers.extract_code(text)
        if code is None:
            return Decision(False, "no_code_block")
        entry, prefix = tests.get("entry_point"), example.source.get("prompt")
        if entry and prefix and not re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", code):
            code = prefix + code  # a HumanEval-style body without its signature: complete it
        context = prefix if entry and prefix else ""  # a HumanEval prompt: trusted helpers for the tests
        result = sandbox.check_program(code, **tests, context=context, timeout_s=timeout_s, memory_mb=memory_mb)
        return None if result.passed else Decision(False, "code_failed", f"{result.status}: {result.detail}"[:300])
    return check


def _plugin_check(target: str) -> _Check:
    function = import_target(target, "filter")
    if not callable(function):
        raise ConfigError(f"filter '{target}' is not callable")

    def check(example: Example, text: str) -> Decision | None:
        try:
            out = function(example, text)
        except Exception as exc:  # a broken plug-in must stop the run, not silently reject everything
            raise SdftError(f"filter '{target}' failed on example {example.id}: {exc!r}") from exc
        ok, reason = out if isinstance(out, tuple) else (out, "")
        return None if ok else Decision(False, str(reason) or "plugin_rejected")
    return check


def make_filter(kind: str = "general", mode: str = "default", **options) -> FilterFn:
    """Build the filter for a task kind: ``general``, ``math``, ``function_call``, ``code``, or a user
    function ``"module:function"`` called as ``function(example, rewrite_text) -> bool | (bool, reason)``.

    Options: ``signatures`` (function_call: ``{name: [params]}``, ``{name: schema}`` or a list of
    BFCL/OpenAI schemas, to reconcile positional and keyword arguments); ``run_tests`` (code, default
    True), ``timeout_s`` (10) and ``memory_mb`` (512) for the sandboxed test run.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown filter mode '{mode}'; known: {', '.join(MODES)}")
    paper = mode == "paper"
    if kind == "general":
        check = None
    elif kind == "math":
        check = _math_check(paper)
    elif kind == "function_call":
        check = _call_check(paper, options.pop("signatures", None))
    elif kind == "code":
        if not paper and options.get("run_tests", True):
            sandbox.require()  # refuse before any model is loaded, not on the first rewrite
        check = _code_check(paper, bool(options.pop("run_tests", True)), float(options.pop("timeout_s", 10)),
                            int(options.pop("memory_mb", 512)))
    elif ":" in kind:
        check = _plugin_check(kind)
    else:
        raise ConfigError(f"unknown filter kind '{kind}'; known: {', '.join(KINDS)} or 'module:function'")
    if options:
        raise ConfigError(f"unknown option(s) for the '{kind}' filter: {', '.join(sorted(options))}")

    def filter_fn(example: Example, completion: Completion, prompt: str) -> Decision:
        decision = _common(example, completion, prompt, paper)
        if decision is None and check is not None:
            decision = check(example, completion.text)
        return decision or _ACCEPT

    filter_fn.kind, filter_fn.mode = kind, mode  # recorded in run provenance
    return filter_fn
