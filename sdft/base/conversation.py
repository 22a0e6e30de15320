"""Conversations with several assistant turns and tool calls, in one canonical form for every stage.

Record shapes read here (``sdft.base.data`` detects them and turns the rest of a record into an ``Example``):

* OpenAI / TRL ``messages``: ``{role, content}``; an assistant message may carry ``tool_calls``
  (``[{id?, type: "function", function: {name, arguments}}]``, ``arguments`` a JSON object or its text) and
  ``tool`` messages answer them (``tool_call_id``, ``name`` optional). A record-level ``tools`` list (JSON
  schemas, or their JSON text) describes the functions.
* ShareGPT ``conversations`` of ``{from, value}``, with LLaMA-Factory's function turns: ``from:
  function_call`` (``value`` the JSON text of ``{name, arguments}`` or a list of them) and ``from:
  observation`` (the tool's answer); ``tools`` as above.
* TRL ``prompt`` / ``completion`` as message lists (conversational) or as texts.

The canonical turn is an OpenAI message: ``role`` user / assistant / tool, ``content`` text, and for an
assistant turn that calls tools ``tool_calls = [{"type": "function", "function": {"name", "arguments":
dict}}]`` (arguments parsed: chat templates write them with ``tojson``, which would quote a text twice).
System messages are not turns: they become the example's system text.
"""

from __future__ import annotations

import json
import re

from sdft.base.records import kind

ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "human": "user",
              "assistant": "assistant", "gpt": "assistant", "model": "assistant",
              "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
              "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
              "function_call": "function_call"}  # ShareGPT (LLaMA-Factory): an assistant turn that calls
TOOLS_KEY = "tools"
ALTERNATION = ("after any system messages, turns alternate user, assistant, ...; an assistant turn with tool "
               "calls is followed by tool turns, then the assistant again")


class BadTurn(Exception):
    """A problem with one record's turns: ``message`` and the ``field`` it is in."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


def parse_turns(turns, key: str) -> tuple[list[str], list[dict], list[str]]:
    """``(system texts, canonical turns, where each turn's text is)`` of a message list, roles not yet checked
    for order. ``key`` names the list in error messages."""
    if not isinstance(turns, list):
        raise BadTurn(f"expected a list of messages, got {kind(turns)}", key)
    system, parsed, wheres = [], [], []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise BadTurn(f"expected a message object, got {kind(turn)}", where)
        role_key = "role" if "role" in turn else "from"
        role = ROLE_NAMES.get(str(turn.get(role_key)).lower())
        if role is None:
            raise BadTurn(f"unknown role {turn.get(role_key)!r}; accepted: {', '.join(ROLE_NAMES)}",
                          f"{where}.{role_key}")
        text_key = "content" if "content" in turn else "value"
        text = turn.get(text_key)
        if role == "function_call":
            parsed.append({"role": "assistant", "content": "",
                           "tool_calls": _calls_from_text(text, f"{where}.{text_key}")})
            wheres.append(f"{where}.{text_key}")
            continue
        if isinstance(text, list):  # OpenAI content parts: [{"type": "text", "text": ...}, ...]
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict) and p.get("type") == "text")
        calls = turn.get("tool_calls") if role == "assistant" else None
        if text is None and calls:
            text = ""  # OpenAI writes content: null beside tool_calls
        if not isinstance(text, str):
            raise BadTurn(f"expected text, got {kind(text)}", f"{where}.{text_key}")
        if role == "system":
            if parsed:  # where it sits would matter, and a system slot has no place mid-conversation
                raise BadTurn("a system message after the conversation started", where)
            system.append(text)
            continue
        message = {"role": role, "content": text}
        if calls is not None:
            message["tool_calls"] = _calls(calls, f"{where}.tool_calls")
        if role == "tool":
            for extra in ("tool_call_id", "name"):
                if turn.get(extra) is not None:
                    if not isinstance(turn[extra], str):
                        raise BadTurn(f"expected text, got {kind(turn[extra])}", f"{where}.{extra}")
                    message[extra] = turn[extra]
        parsed.append(message)
        wheres.append(f"{where}.{text_key}")
    return system, parsed, wheres


def check_order(turns: list[dict], wheres: list[str], key: str, *, empty_ok: bool = False) -> None:
    """Turns go user, assistant, ..., tool turns only after an assistant turn that calls tools, and the last is
    a non-empty assistant turn (empty allowed for an accepted distilled rewrite)."""
    expected = ("user",)
    for turn, where in zip(turns, wheres):
        role = turn["role"]
        if role not in expected:
            wanted = " or ".join(f"'{r}'" for r in expected)
            raise BadTurn(f"expected a {wanted} message here, found '{role}' ({ALTERNATION})",
                          where.rsplit(".", 1)[0])
        if role == "assistant":
            expected = ("tool",) if turn.get("tool_calls") else ("user",)
        else:
            expected = ("assistant", "tool") if role == "tool" else ("assistant",)
    if not turns or turns[-1]["role"] != "assistant":
        raise BadTurn("the last message must be the assistant's response", key)
    if not (turns[-1]["content"].strip() or turns[-1].get("tool_calls")) and not empty_ok:
        raise BadTurn("empty response", wheres[-1])
    last_user = max(i for i, t in enumerate(turns) if t["role"] == "user")
    if not turns[last_user]["content"].strip():
        raise BadTurn("empty instruction (the last user message)", wheres[last_user])


def parse_tools(value, key: str = TOOLS_KEY) -> list[dict] | None:
    """A record's tool list (JSON schemas), given as a list or as its JSON text; None when absent or empty."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise BadTurn(f"expected a list of tools or its JSON text ({exc})", key) from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise BadTurn(f"expected a list of tool objects, got {kind(value)}", key)
    for i, tool in enumerate(value):
        name = tool.get("function", tool).get("name") if isinstance(tool.get("function", tool), dict) else None
        if not isinstance(name, str) or not name:
            raise BadTurn("a tool needs a 'name' (or function.name)", f"{key}[{i}]")
    return value or None


def _calls(calls, where: str) -> list[dict]:
    if not isinstance(calls, list) or not calls:
        raise BadTurn(f"expected a non-empty list of tool calls, got {kind(calls)}", where)
    out = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            raise BadTurn(f"expected a tool call object, got {kind(call)}", f"{where}[{i}]")
        body = call.get("function", call)  # {function: {name, arguments}} (OpenAI) or {name, arguments}
        if not isinstance(body, dict):
            raise BadTurn(f"expected {{name, arguments}}, got {kind(body)}", f"{where}[{i}].function")
        out.append(_call(body, f"{where}[{i}]" + (".function" if "function" in call else ""), call.get("id")))
    return out


def _call(body: dict, where: str, call_id=None) -> dict:
    name, arguments = body.get("name"), body.get("arguments", {})
    if not isinstance(name, str) or not name.strip():
        raise BadTurn(f"a tool call needs a function name, got {kind(name)}", f"{where}.name")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise BadTurn(f"arguments are not JSON ({exc})", f"{where}.arguments") from None
    if not isinstance(arguments, dict):
        raise BadTurn(f"expected the arguments as a JSON object, got {kind(arguments)}", f"{where}.arguments")
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if isinstance(call_id, str) and call_id:
        call["id"] = call_id
    return call


def _calls_from_text(text, where: str) -> list[dict]:
    """LLaMA-Factory's function_call value: the JSON text of {name, arguments} or of a list of them."""
    if not isinstance(text, str):
        raise BadTurn(f"expected the JSON text of a function call, got {kind(text)}", where)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadTurn(f"a function_call turn holds JSON {{name, arguments}} ({exc})", where) from None
    return _calls(value if isinstance(value, list) else [value], where)


# ------------------------------------------------------------------------------------- reading turns

def calls_text(calls: list[dict]) -> str:
    """Tool calls as text, one ``<tool_call>`` block each (the Hermes / Qwen2.5 layout): what a rewrite of a
    tool-call turn is compared with, and what a chat template that cannot write tool calls is given."""
    return "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                    "arguments": c["function"]["arguments"]}, ensure_ascii=False)
                     + "\n</tool_call>" for c in calls)


def turn_text(turn: dict) -> str:
    """An assistant turn as one text: its content, then its tool calls."""
    calls = calls_text(turn["tool_calls"]) if turn.get("tool_calls") else ""
    return "\n".join(t for t in (turn["content"], calls) if t)


def uses_tools(turns: list[dict] | None, tools) -> bool:
    return bool(tools) or any(t.get("tool_calls") or t["role"] == "tool" for t in turns or ())


def assistant_indices(turns: list[dict]) -> list[int]:
    return [i for i, t in enumerate(turns) if t["role"] == "assistant"]


def pairs(turns: list[dict]) -> list[tuple[str, str]]:
    """Earlier (user, assistant) pairs of a conversation without tool turns, before its last user turn."""
    return [(turns[j]["content"], turns[j + 1]["content"]) for j in range(0, len(turns) - 2, 2)]


_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def calls_in_text(text: str) -> list[tuple[str, dict]] | None:
    """``(name, arguments)`` of each ``<tool_call>`` block in a model's text, or None if a block is not a JSON
    ``{name, arguments}`` (arguments given as JSON text are read too)."""
    found = []
    for block in _CALL_BLOCK.findall(text):
        try:
            call = json.loads(block)
            arguments = call.get("arguments", {})
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except (ValueError, AttributeError):
            return None
        if not isinstance(call.get("name"), str) or not isinstance(arguments, dict):
            return None
        found.append((call["name"], arguments))
    return found


def same_calls(text: str, calls: list[dict]) -> bool:
    """Whether ``text`` makes exactly ``calls`` (names and argument values, in order)."""
    return calls_in_text(text) == [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
