"""Whole conversations through a tokenizer's chat template, tool calls and tool lists included.

The template's own tool rendering is used where it has one (Qwen2.5 writes the tool list into its system
turn and each call as a ``<tool_call>`` block). A template without one (SmolLM2's, and most older ones)
would drop the calls silently, leaving an empty assistant turn to learn: there the calls are written into
the assistant's text and the tool list into the system text, in the same ``<tool_call>`` / ``<tools>``
layout (Hermes-style), so that a model sees one convention whichever template it has.
"""

from __future__ import annotations

import json

from sdft.base.conversation import turn_text
from sdft.base.errors import ConfigError, SdftError
from sdft.base.templates import Template, _fill, _system_slot, model_default_system, render

_PROBE_TOOL = "sdft_probe_tool"
_PROBE_CALL = "sdft_probe_call"
_TOOLS_TEXT = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
               "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n"
               "</tools>\n\nFor each function call, return a json object with function name and arguments within "
               "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
               "<args-json-object>}}\n</tool_call>")
_SUPPORT: dict[int, tuple[bool, bool]] = {}  # id(tokenizer) -> (renders tool lists, renders tool calls)


def tool_support(tokenizer) -> tuple[bool, bool]:
    """(the template writes a ``tools=`` list, the template writes an assistant turn's ``tool_calls``), found by
    rendering a probe of each and looking for its name."""
    key = id(tokenizer)
    if key not in _SUPPORT:
        user = [{"role": "user", "content": "hi"}]
        tool = {"type": "function", "function": {"name": _PROBE_TOOL, "description": "probe",
                                                 "parameters": {"type": "object", "properties": {}}}}
        call = {"role": "assistant", "content": "",
                "tool_calls": [{"type": "function", "function": {"name": _PROBE_CALL, "arguments": {}}}]}
        _SUPPORT[key] = (_mentions(tokenizer, user, [tool], _PROBE_TOOL),
                         _mentions(tokenizer, [*user, call], None, _PROBE_CALL))
    return _SUPPORT[key]


def _mentions(tokenizer, messages: list[dict], tools, name: str) -> bool:
    try:
        return name in tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    except Exception:  # a template that refuses the probe does not render it either
        return False


def messages_for(template: Template, turns: list[dict], tools, tokenizer, *, system: str | None,
                 system_prompt: str, reference: str | None = None) -> tuple[list[dict], list[dict] | None]:
    """``(messages, tools)`` to hand to the chat template: the system slot (as ``templates.render`` fills it),
    the turns with the template applied to the last user turn (a distillation template's reference and moved
    system text included), and the tool fallbacks above."""
    slot, preamble = _system_slot(template, system_prompt, system, "chat")
    last_user = max(i for i, t in enumerate(turns) if t["role"] == "user")
    user = _fill(template.user, turns[last_user]["content"], reference)
    user = f"{preamble}\n\n{user}" if preamble else user
    turns = [{**t, "content": user} if i == last_user else t for i, t in enumerate(turns)]
    writes_tools, writes_calls = tool_support(tokenizer)
    if not writes_calls:
        turns = [{"role": "assistant", "content": turn_text(t)} if t.get("tool_calls") else t for t in turns]
    if tools and not writes_tools:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        base = slot if slot is not None else model_default_system(tokenizer) or ""
        slot = "\n\n".join(t for t in (base, _TOOLS_TEXT.format(tools=listed)) if t)
        tools = None
    head = [] if slot is None else [{"role": "system", "content": slot}]
    return [*head, *turns], tools


def render_messages(tokenizer, messages: list[dict], tools, *, add_generation_prompt: bool) -> str:
    """The chat template's text of ``messages``; a template that cannot render them is a ConfigError."""
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja's TemplateError, or a template's raise_exception(...)
        roles = ", ".join(dict.fromkeys(m["role"] for m in messages))
        raise ConfigError(f"the model's chat template cannot render a conversation with roles {roles} "
                          f"({type(exc).__name__}: {exc})") from None


def render_context(template: Template, turns: list[dict], tools, tokenizer, *, system: str | None,
                   system_prompt: str, reference: str | None = None) -> str:
    """The generation prompt after ``turns`` (which end with a user or tool turn): where the next assistant
    turn begins. Distillation and evaluation of tool-using conversations render through this."""
    if template.uses_reference and reference is None:
        raise ValueError(f"template '{template.name}' needs a reference answer")
    messages, tools = messages_for(template, turns, tools, tokenizer, system=system, system_prompt=system_prompt,
                                   reference=reference)
    return render_messages(tokenizer, messages, tools, add_generation_prompt=True) + template.assistant_prefix


def render_prompt(template: Template, example, tokenizer, mode: str, system_prompt: str, *,
                  reference: str | None = None, system: str | None = None) -> str:
    """The prompt of an example's last assistant turn: ``templates.render`` with its history pairs (``system``:
    the record's system text where the caller passes it on), or, for a conversation with tools, the chat
    template over every turn before it (its own system text included)."""
    if not example.uses_tools:
        return render(template, example.instruction, reference=reference, tokenizer=tokenizer, mode=mode,
                      history=example.history or None, system=system, system_prompt=system_prompt)
    if mode != "chat":
        raise SdftError(f"{example.location}: a conversation with tool calls needs the chat template "
                        "(--template-mode chat or auto with a chat model), not plain text")
    return render_context(template, example.turns[:-1], example.tools, tokenizer, system=example.system,
                          system_prompt=system_prompt, reference=reference)
