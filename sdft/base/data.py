"""Task data: turn the records of a data file (read by :mod:`sdft.base.records`: JSON / JSONL / CSV /
Parquet or a hub dataset) into :class:`Example` objects.

Shapes (detected per file from the first record, or forced with ``shape=``):

* ``alpaca``: ``instruction``, ``output``, optional ``input``, ``system``, ``history`` ([user, assistant]
  pairs). MultiArith and OpenFunctions files (``instruction``, ``output``) are alpaca without input.
* ``gsm8k``: ``question``, ``answer``.  ``advbench``: ``goal``, ``target`` (AdvBench's CSV).
* ``sharegpt``: ``conversations`` of ``{from, value}``.  ``messages``: OpenAI ``{role, content}``.
  In both, the last message is the assistant's response and the user turn before it the instruction;
  earlier pairs become ``history``. Turns may use either key naming (datasets mix them). Both may hold
  tool calls and tool turns and a ``tools`` list (:mod:`sdft.base.conversation`); every turn is kept in
  ``Example.turns``.
* ``prompt_completion``: TRL's ``prompt`` / ``completion``, texts (the prompt is the instruction) or
  message lists (read as ``messages``).

``columns`` maps roles (id, instruction, input, response, system, history) to other column names for
the flat shapes. Every record is validated before anything is returned, so bad input stops a run before
generation starts; errors are :class:`DataError` naming file, line or record, and field.

A distilled file (``sdft distill`` output) is a file of the user's shape whose records carry an extra
``"sdft"`` key: ``{accepted, reason, rewrite, original}``; it loads like any other file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass, field

from sdft.base import conversation
from sdft.base.conversation import BadTurn as _Bad
from sdft.base.errors import ConfigError, DataError
from sdft.base.records import kind, load_records, location, names, read_source

__all__ = ["Example", "load_examples", "load_records", "with_response", "is_distilled", "pick_response"]


@dataclass
class Example:
    """One training / distillation example, whatever shape it came in.

    ``instruction`` is the user's request (alpaca ``instruction`` and ``input`` joined, by default by a blank line),
    ``response`` the target answer, ``history`` earlier (user, assistant) turns. ``source`` keeps the
    record exactly as read so that outputs can echo it back with only the response replaced.
    """

    id: str
    instruction: str
    response: str
    history: list[tuple[str, str]] = field(default_factory=list)
    system: str | None = None
    source: dict = field(default_factory=dict)
    shape: str = "alpaca"
    location: str = ""  # "file, line N" for error messages
    # Flat shapes: role -> column actually used (after `columns=`), so with_response writes the right key.
    columns: dict[str, str] = field(default_factory=dict)
    # Chat shapes: every turn after the system messages, canonical (sdft.base.conversation), the last one the
    # response; and the record's tool list. None for flat shapes (history + instruction + response say it all).
    turns: list[dict] | None = None
    tools: list[dict] | None = None

    @property
    def uses_tools(self) -> bool:
        """Tool calls, tool turns or a tool list: only a chat template can render it (``history`` cannot)."""
        return conversation.uses_tools(self.turns, self.tools)

    def conversation(self) -> list[dict]:
        """Every turn, canonical, ending with the assistant's response (built from history for flat shapes)."""
        if self.turns is not None:
            return self.turns
        turns = [{"role": r, "content": t} for u, a in self.history for r, t in (("user", u), ("assistant", a))]
        return [*turns, {"role": "user", "content": self.instruction}, {"role": "assistant", "content": self.response}]

    def assistant_turns(self) -> int:
        return len(conversation.assistant_indices(self.conversation()))


FLAT_SHAPES = {
    "alpaca": {"instruction": "instruction", "input": "input", "response": "output",
               "system": "system", "history": "history"},
    "gsm8k": {"instruction": "question", "response": "answer"},
    "advbench": {"instruction": "goal", "response": "target"},
}
CHAT_SHAPES = {"messages": "messages", "sharegpt": "conversations"}  # shape -> list key
PROMPT_COMPLETION = "prompt_completion"  # TRL's prompt / completion: texts, or message lists
SHAPES = (*FLAT_SHAPES, *CHAT_SHAPES, PROMPT_COMPLETION)
ROLES = ("id", "instruction", "input", "response", "system", "history")
DISTILL_KEY = "sdft"
DISTILL_KEY_ID = "id"  # optional in the distillation record: the example's id at distillation time
_SHAPE_HELP = ("alpaca (instruction, output[, input, history, system]), gsm8k (question, answer), "
               "advbench (goal, target), sharegpt (conversations), messages (messages), prompt_completion "
               "(prompt, completion); "
               "map other names with columns={'instruction': ..., 'response': ...}")


# ------------------------------------------------------------------------------------------- examples

def load_examples(path, *, shape: str = "auto", columns: dict[str, str] | None = None,
                  limit: int | None = None, input_separator: str = "\n\n") -> list[Example]:
    """Load, detect the shape, validate every record, and return the first ``limit`` examples.

    ``input_separator`` joins an alpaca ``instruction`` and its ``input`` (a blank line by default; the
    reference code joined them with a single newline, which the paper presets reproduce).

    All records are validated (not only the first ``limit``) so that a file is valid or not whatever
    the limit, and ids do not depend on it either.
    """
    if shape != "auto" and shape not in SHAPES:
        raise ConfigError(f"unknown data shape '{shape}'; accepted: auto, {', '.join(SHAPES)}")
    unknown = set(columns or {}) - set(ROLES)
    if unknown:
        raise ConfigError(f"unknown column role(s) {names(unknown)}; accepted: {', '.join(ROLES)}")
    if columns and (shape in CHAT_SHAPES or shape == PROMPT_COMPLETION):
        raise ConfigError(f"columns= applies to flat shapes ({', '.join(FLAT_SHAPES)}), not '{shape}'")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be 0 or more, got {limit}")
    label, rows = read_source(path)
    first_where, first = rows[0]
    shape = shape if shape != "auto" else _detect(first, columns)
    if shape is None:
        raise DataError(label, f"cannot tell the data shape; fields found: {names(_fields(first))}; "
                               f"accepted shapes: {_SHAPE_HELP}", **first_where)
    cols = {**FLAT_SHAPES[shape], **(columns or {})} if shape in FLAT_SHAPES else {}
    parsed, problems = [], []
    for where, rec in rows:
        try:
            parsed.append(_parse(rec, shape, cols, input_separator))
        except _Bad as bad:
            problems.append((where, bad))
    if problems:
        where, bad = problems[0]
        # One line, but say how much else is wrong so that fixes do not come one rerun at a time.
        more = f" ({len(problems) - 1} more bad record(s) in this file)" if len(problems) > 1 else ""
        raise DataError(label, bad.message + more, field=bad.field, **where)
    ids = _ids([rec for _, rec in rows], cols.get("id", "id"), parsed)
    examples = [Example(id=i, instruction=ins, response=resp, history=hist, system=system, source=rec,
                        shape=shape, location=location(label, where), columns=dict(cols), turns=turns, tools=tools)
                for i, (where, rec), (ins, resp, hist, system, turns, tools) in zip(ids, rows, parsed)]
    return examples if limit is None else examples[:limit]


def _fields(rec: dict) -> list[str]:
    return [k for k in rec if k != DISTILL_KEY]


def _detect(rec: dict, columns: dict | None) -> str | None:
    keys = set(_fields(rec))
    if not columns:
        for name, key in CHAT_SHAPES.items():
            if key in keys:
                return name
        if {"prompt", "completion"} <= keys:
            return PROMPT_COMPLETION
    candidates = {name: {**cols, **(columns or {})} for name, cols in FLAT_SHAPES.items()}
    # Prefer a shape whose instruction and response are both present; else the first whose instruction
    # is, so that e.g. {"instruction", "response"} reports "missing field 'output'" with a hint.
    for need in (("instruction", "response"), ("instruction",)):
        for name, cols in candidates.items():
            if all(cols[role] in keys for role in need):
                return name
    return None


def _parse(rec: dict, shape: str, cols: dict, input_separator: str = "\n\n") -> tuple:
    """(instruction, response, history, system, turns, tools) of one record, or raise _Bad."""
    if DISTILL_KEY in rec:
        _check_distilled(rec[DISTILL_KEY])
    # A distilled record's response is its accepted rewrite, which may be empty (reference filter rules).
    empty_ok = DISTILL_KEY in rec and rec[DISTILL_KEY]["accepted"]
    if shape in CHAT_SHAPES:
        return _parse_chat(rec, CHAT_SHAPES[shape], empty_ok)
    if shape == PROMPT_COMPLETION:
        if not isinstance(rec.get("prompt"), str):
            return _parse_prompt_completion(rec, empty_ok)
        cols = {"instruction": "prompt", "response": "completion"}
    instruction = _text(rec, cols["instruction"], required=True)
    if not instruction.strip():
        raise _Bad("empty instruction", cols["instruction"])
    extra = _text(rec, cols["input"], required=False) if "input" in cols else ""
    if extra.strip():
        instruction = f"{instruction}{input_separator}{extra}"
    response = _text(rec, cols["response"], required=True)
    if not response.strip() and not empty_ok:
        raise _Bad("empty response", cols["response"])
    system = _text(rec, cols["system"], required=False) if "system" in cols else ""
    history = []
    hist_key = cols.get("history")
    if hist_key and rec.get(hist_key) is not None:
        if not isinstance(rec[hist_key], list):
            raise _Bad(f"expected a list of [user, assistant] pairs, got {kind(rec[hist_key])}", hist_key)
        for i, pair in enumerate(rec[hist_key]):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise _Bad(f"expected a [user, assistant] pair of texts, got {kind(pair)}", f"{hist_key}[{i}]")
            history.append((pair[0], pair[1]))
    return instruction, response, history, system or None, None, None


def _parse_chat(rec: dict, key: str, empty_ok: bool = False) -> tuple:
    system, turns, wheres = conversation.parse_turns(rec.get(key), key)
    conversation.check_order(turns, wheres, key, empty_ok=empty_ok)
    return _from_turns(rec, system, turns)


def _parse_prompt_completion(rec: dict, empty_ok: bool) -> tuple:
    """TRL's conversational prompt / completion: the two message lists make one conversation."""
    system, turns, wheres = conversation.parse_turns(rec.get("prompt"), "prompt")
    more_system, more, more_wheres = conversation.parse_turns(rec.get("completion"), "completion")
    if more_system:
        raise _Bad("a system message belongs in the prompt", "completion")
    conversation.check_order(turns + more, wheres + more_wheres, "completion", empty_ok=empty_ok)
    return _from_turns(rec, system, turns + more)


def _from_turns(rec: dict, system: list[str], turns: list[dict]) -> tuple:
    tools = conversation.parse_tools(rec.get(conversation.TOOLS_KEY))
    top_system = _text(rec, "system", required=False)  # sharegpt files may put it at top level
    last_user = max(i for i, t in enumerate(turns) if t["role"] == "user")
    # Without tools the turns alternate, so earlier pairs say it all (as they always have).
    history = [] if conversation.uses_tools(turns, tools) else conversation.pairs(turns)
    return (turns[last_user]["content"], conversation.turn_text(turns[-1]), history,
            "\n\n".join([top_system] * bool(top_system) + system) or None, turns, tools)


def _check_distilled(meta) -> None:
    if not isinstance(meta, dict):
        raise _Bad(f"expected the distillation record {{accepted, reason, rewrite, original}}, got {kind(meta)}",
                   DISTILL_KEY)
    for key, types in (("accepted", bool), ("reason", str), ("rewrite", (str, type(None))), ("original", str)):
        if key not in meta or not isinstance(meta[key], types):
            raise _Bad(f"missing or wrong type ({kind(meta.get(key))})", f"{DISTILL_KEY}.{key}")
    if meta["accepted"] and meta["rewrite"] is None:
        # An empty text is allowed: the reference filter accepts one and training skips it (counted).
        raise _Bad("an accepted rewrite must be text", f"{DISTILL_KEY}.rewrite")
    turns = meta.get("turns", [])  # earlier assistant turns' rewrites (sdft.distill.turns)
    if not isinstance(turns, list):
        raise _Bad(f"expected a list of turn rewrites, got {kind(turns)}", f"{DISTILL_KEY}.turns")
    for i, turn in enumerate(turns):
        for key, types in (("turn", int), ("accepted", bool), ("rewrite", (str, type(None)))):
            if not isinstance(turn, dict) or not isinstance(turn.get(key), types):
                raise _Bad("missing or wrong type", f"{DISTILL_KEY}.turns[{i}].{key}")


def _text(rec: dict, key: str, *, required: bool) -> str:
    value = rec.get(key)
    if value is None:  # absent, JSON null, or an empty Parquet cell
        if required:
            found = " (it is null)" if key in rec else f" (fields found: {names(_fields(rec))})"
            raise _Bad(f"missing required field{found}", key)
        return ""
    if not isinstance(value, str):
        raise _Bad(f"expected text, got {kind(value)}", key)
    return value


def _ids(records: list[dict], id_key: str, parsed: list) -> list[str]:
    own = [rec.get(id_key) for rec in records]
    if all(isinstance(rec.get(DISTILL_KEY), dict) and DISTILL_KEY_ID in rec[DISTILL_KEY] for rec in records):
        own = [rec[DISTILL_KEY][DISTILL_KEY_ID] for rec in records]  # the id the record had when distilled
    if all(isinstance(v, (str, int)) and not isinstance(v, bool) and str(v) for v in own) \
            and len(set(map(str, own))) == len(own):
        return [str(v) for v in own]
    # Record number + hash of the prompt side (not the response): stable across runs, distinct for
    # duplicate records, and the same for a record and its distilled copy (whose response changed).
    ids = []
    for n, (instruction, _, history, system, turns, tools) in enumerate(parsed, 1):
        prompt_side = [system, history, instruction]
        if conversation.uses_tools(turns, tools):  # history holds no tool turns: the turns before the response do
            prompt_side += [turns[:-1], tools]
        digest = hashlib.sha1(json.dumps(prompt_side, ensure_ascii=False).encode())
        ids.append(f"{n:06d}-{digest.hexdigest()[:8]}")
    return ids


# ---------------------------------------------------------------------------------- writing / training

def with_response(example: Example, text: str) -> dict:
    """A copy of the example's original record with only its response replaced."""
    record = copy.deepcopy(example.source)
    if example.turns is not None and example.turns[-1].get("tool_calls"):
        return record  # a rewritten call is accepted only when it makes the same calls: the record's stand
    if example.shape in CHAT_SHAPES or (example.shape == PROMPT_COMPLETION and example.turns is not None):
        turns = record[CHAT_SHAPES.get(example.shape, "completion")]
        last = turns[-1]
        last["content" if "content" in last else "value"] = text
    elif example.shape == PROMPT_COMPLETION:
        record["completion"] = text
    else:
        record[(example.columns or FLAT_SHAPES[example.shape])["response"]] = text
    return record


def is_distilled(example: Example) -> bool:
    """Whether the example comes from a ``distilled.jsonl`` (carries the ``sdft`` record)."""
    return isinstance(example.source.get(DISTILL_KEY), dict)


def turn_rewrites(example: Example) -> dict[int, str]:
    """A distilled conversation's accepted rewrites of earlier assistant turns: turn index -> text."""
    meta = example.source.get(DISTILL_KEY) if is_distilled(example) else None
    return {t["turn"]: t["rewrite"] for t in (meta or {}).get("turns", []) if t["accepted"] and t["rewrite"]}


def offers_new_target(meta: dict) -> bool:
    """Whether a distilled record's ``sdft`` block offers a target other than the original: an accepted
    rewrite, or in self-answer mode (``source``) the seed's own answer or the accepted rewrite."""
    return meta["source"] != "original" if "source" in meta else bool(meta.get("accepted"))


def pick_response(example: Example, use_rewrite: bool) -> str:
    """The training target: if ``use_rewrite``, the distillation's target (the accepted rewrite; in
    self-answer mode the target it chose), else the original response."""
    if not is_distilled(example):
        return example.response
    meta = example.source[DISTILL_KEY]
    if use_rewrite and "target" in meta:
        return meta["target"]
    if use_rewrite and meta["accepted"] and meta.get("rewrite") is not None:
        return meta["rewrite"]
    return meta["original"]


def seeded_subset(examples: list, limit: int | None, seed: int) -> list:
    """A seeded random subset of ``limit`` examples, kept in input order (the paper's sample-size study).

    Taking the first N would bias the subset to however the file happens to be sorted.
    """
    if limit is None or limit >= len(examples):
        return list(examples)
    chosen = set(random.Random(f"limit:{seed}").sample(range(len(examples)), limit))
    return [ex for i, ex in enumerate(examples) if i in chosen]
