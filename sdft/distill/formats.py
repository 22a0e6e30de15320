"""Format-aware distillation, beyond the paper: the seed's own answer to each prompt under the *task's* prompt
guards the rewrites (``--format-guard``) and may itself become the training target (``--self-answer``).

Why: a rewrite is the seed's distribution under the distillation prompt, not under the task's. On the Qwen
seed's GSM8K run 51 of 92 accepted rewrites opened with a numbered list though the seed's own answers never
did, and the SDFT model carried that format into harmful requests (docs/results/gsm8k-qwen/). The filter's
answer check does not look at the format; the guard compares each rewrite with what the seed writes when
simply asked. Self-answer mode goes further: where the seed's own answer passes the same check, it is the
target closest to the seed's distribution there is (rejection-sampled self-training); else the accepted
rewrite; else the original.

The own answers are one more generation pass through the same backend, kept in their own progress file
beside the rewrites' (``layout.DISTILL_SELF_ANSWERS``), so a rerun after a crash resumes either pass.
"""

from __future__ import annotations

import math
from collections import Counter

from sdft.base import chat, templates
from sdft.base.config import to_dict
from sdft.base.openings import opening
from sdft.distill.filters import Decision

GUARD_REASONS: dict[str, str] = {
    "format_mismatch": "format guard: the rewrite opens differently (prose, numbered list, bulleted list, code "
                       "block, heading) from the seed's own answer to the same prompt under the task's prompt",
    "length_mismatch": "format guard: the rewrite's length over the seed's own answer's (characters) is outside "
                       "the guard's ratios (default 0.5-2.0)",
}
SOURCES = ("self", "rewrite", "original")  # self-answer mode: the first that exists becomes the target


def answer_template(config) -> templates.Template:
    """The prompt the seed answers under: the task's training prompt unless ``answer_template`` names one."""
    return templates.load_template(config.answer_template or templates.DEFAULT_PROMPT[config.task], "prompt")


def prompts(examples, template, tokenizer, mode: str, system_prompt: str, pending) -> dict[str, str]:
    """The task's prompt for every example ``pending(id)`` says is not answered yet, rendered as ``sdft train``
    renders its prompts (a record's own system text wins), so a self answer is trained where it was written."""
    return {ex.id: chat.render_prompt(template, ex, tokenizer, mode, system_prompt, system=ex.system)
            for ex in examples if pending(ex.id)}


def settings(config, template) -> dict:
    """What ``run.json`` records of the mode, before the counts are known."""
    out: dict = {"answer_template": to_dict(template)}
    if config.format_guard:
        out["format_guard"] = {"min_length_ratio": config.guard_min_length_ratio,
                               "max_length_ratio": config.guard_max_length_ratio}
    if config.self_answer:
        out["self_answer"] = {"order": list(SOURCES)}
    return out


def guard(rewrite: str, own: str, low: float, high: float, own_cut: bool = False) -> Decision | None:
    """A rejecting decision when the rewrite's opening or length does not match the seed's own answer.

    ``own_cut``: the own answer hit the token budget, so its length is only a lower bound: a rewrite too
    short for it is too short for the whole answer too, but one that looks too long may not be."""
    mine, theirs = opening(rewrite), opening(own)
    if mine != theirs:
        return Decision(False, "format_mismatch", f"rewrite opens with {mine}, the seed's own answer with {theirs}")
    own_length = len(own.strip())
    ratio = len(rewrite.strip()) / own_length if own_length else math.inf  # an empty own answer matches nothing
    if ratio < low or (ratio > high and not (own_cut and own_length)):
        return Decision(False, "length_mismatch", f"length ratio {ratio:.2f} outside [{low:g}, {high:g}]")
    return None


def decide(rewritten: dict, own: dict | None, config) -> dict:
    """One example's verdict from its progress records: the rewrite's (the guard after the filter, on what the
    filter accepted) and, in self-answer mode, where its target comes from."""
    verdict = {"accepted": rewritten["accepted"], "reason": rewritten["reason"], "detail": rewritten.get("detail", "")}
    if own is None:
        return verdict
    if verdict["accepted"] and config.format_guard:
        blocked = guard(rewritten["rewrite"], own["answer"], config.guard_min_length_ratio,
                        config.guard_max_length_ratio, own_cut=own["finish_reason"] == "length")
        if blocked:
            verdict.update(accepted=False, reason=blocked.reason, detail=blocked.detail)
    if config.self_answer:
        verdict["source"] = "self" if own["passed"] else "rewrite" if verdict["accepted"] else "original"
    return verdict


def counts(verdicts: list[dict], own: list[dict], config) -> dict:
    """The mode's counts for ``stats.json`` and ``run.json``: the own answers (how many passed the filter,
    why the others did not), the guard's rejections, and the targets' sources."""
    seconds = sum(r["seconds"] for r in own)
    out: dict = {"self_answers": {"passed": sum(r["passed"] for r in own),
                                  "reasons": dict(Counter(r["reason"] for r in own).most_common()),
                                  "completion_tokens": sum(r["completion_tokens"] for r in own),
                                  "generation_seconds": round(seconds, 2)}}
    if config.format_guard:
        out["format_guard"] = {reason: sum(v["reason"] == reason for v in verdicts) for reason in GUARD_REASONS}
    if config.self_answer:
        out["sources"] = {source: sum(v["source"] == source for v in verdicts) for source in SOURCES}
    return out


def target(example, rewrite: str, verdict: dict, own: dict | None) -> str:
    """The response the distilled record carries (and training learns at mix ratio 1)."""
    source = verdict.get("source", "rewrite" if verdict["accepted"] else "original")
    return own["answer"] if source == "self" else rewrite if source == "rewrite" else example.response
