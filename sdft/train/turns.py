"""Training targets of whole conversations: the loss on every assistant turn (``--loss-on all_turns``), or on
the last one of a conversation that only a chat template can render (tool calls, tool turns, a tool list).

A conversation is rendered once by the model's chat template (``sdft.base.chat``). Each trained assistant
turn is found by rendering the conversation up to it: the text up to the generation prompt before the turn
is where its tokens begin, the text through the turn where they end (its end-of-turn token included,
whitespace after it not, as a single-turn target ends with EOS). Both renders must be prefixes of the whole
one, else the template writes a turn differently once later turns follow (some strip earlier reasoning) and
no mask would be right: that is an error naming the example, and ``--loss-on last_turn`` the way out for
conversations without tools. Boundaries become token positions by tokenizing the text before each one and
checking it is a prefix of the whole tokenization (as ``data.on_token_boundary`` does for one turn).
"""

from __future__ import annotations

from sdft.base import conversation
from sdft.base.chat import messages_for, render_messages
from sdft.base.data import turn_rewrites
from sdft.base.errors import SdftError

LOSS_ON = ("all_turns", "last_turn")


def needs_turns(example, loss_on: str, mode: str) -> bool:
    """Whether ``example`` trains through this module rather than as one prompt and one completion: it uses
    tools (a prompt string cannot carry them), or it has several assistant turns and all of them learn."""
    if example.uses_tools:
        if mode != "chat":
            raise SdftError(f"{example.location}: a conversation with tool calls needs the chat template "
                            "(--template-mode chat or auto with a chat model), not plain text")
        return True
    return loss_on == "all_turns" and mode == "chat" and example.assistant_turns() > 1


def conversation_target(example, response: str, template, tokenizer, system_prompt: str, loss_on: str,
                        rewritten: bool = False):
    """``(text, [(start, end)] character spans learned)`` of one conversation (``token_mask`` makes its tokens).

    ``response`` replaces the last assistant turn when it differs from the example's own (a distilled target);
    ``rewritten``: earlier turns take their accepted rewrites too (``sdft distill --rewrite-turns all_turns``).
    A tool-call turn keeps its calls: a rewrite of one was accepted only if it made the same calls.
    """
    turns = [dict(t) for t in example.conversation()]
    new = {**(turn_rewrites(example) if rewritten else {}), len(turns) - 1: response}
    for k, text in new.items():
        if text != conversation.turn_text(turns[k]) and not turns[k].get("tool_calls"):
            turns[k] = {"role": "assistant", "content": text}
    if template.assistant_prefix:
        raise SdftError(f"{example.location}: a prompt template with an assistant prefix cannot train a whole "
                        "conversation (the prefix would sit before one turn only)")
    messages, tools = messages_for(template, turns, example.tools, tokenizer, system=example.system,
                                   system_prompt=system_prompt)
    whole = render_messages(tokenizer, messages, tools, add_generation_prompt=False)
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    eos = tokenizer.eos_token or ""
    spans = []
    for n, i in enumerate(assistant if loss_on == "all_turns" else assistant[-1:]):
        before = render_messages(tokenizer, messages[:i], tools, add_generation_prompt=True)
        through = render_messages(tokenizer, messages[:i + 1], tools, add_generation_prompt=False)
        if not (whole.startswith(before) and whole.startswith(through) and through.startswith(before)):
            raise SdftError(f"{example.location}: the chat template renders assistant turn {n + 1} differently once "
                            "later turns follow, so its tokens cannot be told apart; train the last turn only "
                            "with --loss-on last_turn" + (" (not possible with tool calls)" if example.uses_tools
                                                          else ""))
        turn = through[len(before):]
        end = len(before) + (len(turn.rstrip()) if eos and turn.rstrip().endswith(eos) else len(turn))
        spans.append((len(before), end))
    text = whole[:spans[-1][1]]
    if eos and not text.endswith(eos):  # the model learns to stop after its last turn, as single-turn targets do
        text, spans[-1] = text + eos, (spans[-1][0], spans[-1][1] + len(eos))
    return text, spans


def token_mask(text: str, spans: list[tuple[int, int]], tokenizer, where: str) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and a mask that is 1 on the tokens of ``spans``. A span starting after whitespace
    that the tokenizer merges into the next token starts at that token instead (its text is what is learned)."""
    ids = tokenizer(text).input_ids
    mask = [0] * len(ids)
    for start, end in spans:
        first = _token_at(text, start, ids, tokenizer)
        if first is None and text[:start].rstrip() != text[:start]:
            first = _token_at(text, len(text[:start].rstrip()), ids, tokenizer)
        last = _token_at(text, end, ids, tokenizer)
        if first is None or last is None:
            raise SdftError(f"{where}: an assistant turn does not start or end on a token boundary of the model's "
                            "tokenizer (its text merges with the text around it), so its loss mask would be wrong")
        mask[first:last] = [1] * (last - first)
    return ids, mask


def _token_at(text: str, position: int, ids: list[int], tokenizer) -> int | None:
    """How many tokens of ``ids`` cover ``text[:position]``, or None if that is not a token boundary."""
    if position == len(text):
        return len(ids)
    head = tokenizer(text[:position]).input_ids
    return len(head) if ids[:len(head)] == head else None
