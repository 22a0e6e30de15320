"""Distilling conversations: each assistant turn is rewritten with the conversation before it in context
(``--rewrite-turns all_turns``, the default), or only the last (``last_turn``, what sdft did before).

Each turn is a unit of work with an id of its own: the last turn keeps the example's id (so distillations of
single-turn data, their progress files and outputs, are what they were), an earlier turn ``k`` (its index
among the conversation's turns) is ``ID#k``. A unit is a copy of the example whose instruction is the user turn
before it, whose response is the turn, whose history (or, with tools, turns) is what came before: the
templates and filters read it as they read any example. A tool-call turn's rewrite must make the very calls
of the original (names and arguments), whatever the filter; training keeps the original calls then.
"""

from __future__ import annotations

import dataclasses

from sdft.base import chat, conversation
from sdft.base.data import Example
from sdft.distill.filters import Decision

TURNS = ("all_turns", "last_turn")
SEPARATOR = "#"


def units(example: Example, which: str) -> list[Example]:
    """The example itself (its last turn), preceded, with ``all_turns``, by one copy per earlier assistant turn."""
    if which == "last_turn":
        return [example]
    turns = example.conversation()
    earlier = conversation.assistant_indices(turns)[:-1]
    return [_unit(example, turns, k) for k in earlier] + [example]


def _unit(example: Example, turns: list[dict], k: int) -> Example:
    last_user = max(i for i in range(k) if turns[i]["role"] == "user")
    tools = conversation.uses_tools(turns[:k + 1], example.tools)
    return dataclasses.replace(
        example, id=f"{example.id}{SEPARATOR}{k}", instruction=turns[last_user]["content"],
        response=conversation.turn_text(turns[k]), history=[] if tools else conversation.pairs(turns[:k + 1]),
        turns=turns[:k + 1] if example.turns is not None else None)


def prompt(unit: Example, template, tokenizer, mode: str, system_prompt: str) -> str:
    """The distillation prompt of one turn: the conversation before it, its user turn holding the reference
    (without tools: rendered as sdft always rendered it, the record's system text not passed on)."""
    return chat.render_prompt(template, unit, tokenizer, mode, system_prompt, reference=unit.response)


def checking_calls(accept):
    """The filter, with a tool-call turn's rewrite refused unless it makes the original's calls exactly."""
    def check(unit: Example, completion, prompt_text: str):
        turn = unit.conversation()[-1]
        if turn.get("tool_calls") and not conversation.same_calls(completion.text, turn["tool_calls"]):
            return Decision(False, "call_mismatch", "a rewritten tool call must keep the function names and "
                                                    "arguments of the original")
        return accept(unit, completion, prompt_text)
    return check


def turn_record(unit: Example, progress: dict) -> dict:
    """What the distilled record's ``sdft.turns`` keeps of an earlier turn's rewrite."""
    return {"turn": int(unit.id.rsplit(SEPARATOR, 1)[1]), "accepted": progress["accepted"],
            "reason": progress["reason"], "rewrite": progress["rewrite"], "original": unit.response}
