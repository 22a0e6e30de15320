"""Task data: load JSON / JSONL / CSV / Parquet files (or hub datasets) into :class:`Example` objects.

Shapes (detected per file from the first record, or forced with ``shape=``):

* ``alpaca``: ``instruction``, ``output``, optional ``input``, ``system``, ``history`` ([user, assistant]
  pairs). MultiArith and OpenFunctions files (``instruction``, ``output``) are alpaca without input.
* ``gsm8k``: ``question``, ``answer``.  ``advbench``: ``goal``, ``target`` (AdvBench's CSV).
* ``sharegpt``: ``conversations`` of ``{from, value}``.  ``messages``: OpenAI ``{role, content}``.
  In both, the last message is the assistant's response and the user turn before it the instruction;
  earlier pairs become ``history``. Turns may use either key naming (datasets mix them).

``columns`` maps roles (id, instruction, input, response, system, history) to other column names for
the flat shapes. Every record is validated before anything is returned, so bad input stops a run before
generation starts; errors are :class:`DataError` naming file, line or record, and field.

A distilled file (``sdft distill`` output) is a file of the user's shape whose records carry an extra
``"sdft"`` key: ``{accepted, reason, rewrite, original}``; it loads like any other file.
"""

from __future__ import annotations

import copy
import csv
import gzip
import hashlib
import io
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from sdft.errors import ConfigError, DataError


@dataclass
class Example:
    """One training / distillation example, whatever shape it came in.

    ``instruction`` is the user's request (alpaca ``instruction`` and ``input`` joined by a blank line),
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


FLAT_SHAPES = {
    "alpaca": {"instruction": "instruction", "input": "input", "response": "output",
               "system": "system", "history": "history"},
    "gsm8k": {"instruction": "question", "response": "answer"},
    "advbench": {"instruction": "goal", "response": "target"},
}
CHAT_SHAPES = {"messages": "messages", "sharegpt": "conversations"}  # shape -> list key
SHAPES = (*FLAT_SHAPES, *CHAT_SHAPES)
ROLES = ("id", "instruction", "input", "response", "system", "history")
DISTILL_KEY = "sdft"
DISTILL_KEY_ID = "id"  # optional in the distillation record: the example's id at distillation time
_SHAPE_HELP = ("alpaca (instruction, output[, input, history, system]), gsm8k (question, answer), "
               "advbench (goal, target), sharegpt (conversations), messages (messages); "
               "map other names with columns={'instruction': ..., 'response': ...}")
_ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "human": "user",
               "assistant": "assistant", "gpt": "assistant", "model": "assistant",
               "chatgpt": "assistant", "bard": "assistant", "bing": "assistant"}
_TEXT_FORMATS = {".json", ".jsonl", ".ndjson", ".csv", ".tsv"}
# Keys under which JSON files commonly wrap their list of records.
_WRAPPER_KEYS = ("data", "examples", "records", "rows", "instances", "items", "train")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+){0,2}$")


class _Bad(Exception):
    """A problem with one record; turned into a DataError once the record's location is known."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


# ---------------------------------------------------------------------------------------------- reading

def load_records(path) -> list[tuple[str, dict]]:
    """``(location, record)`` pairs of a file or hub dataset, e.g. ``("data.jsonl, line 3", {...})``."""
    label, rows = _read(path)
    return [(_location(label, where), rec) for where, rec in rows]


def _location(label: str, where: dict) -> str:
    return ", ".join([label] + [f"{k} {v}" for k, v in where.items()])


def _read(path) -> tuple[str, list[tuple[dict, dict]]]:
    """The label used in messages and ``(where, record)`` pairs; ``where`` is ``{"line": n}`` or
    ``{"record": n}``, the keyword DataError takes."""
    label = str(path)
    p = Path(label)
    suffixes = [s.lower() for s in p.suffixes]
    compressed = p.suffix.lower() == ".gz"
    fmt = (suffixes[-2] if len(suffixes) > 1 else "") if compressed else p.suffix.lower()
    if not p.exists():
        if fmt not in _TEXT_FORMATS | {".parquet"} and _HUB_NAME.match(label):
            return label, _read_hub(label)
        raise DataError(label, "no such file, and not a Hugging Face dataset name (org/name[:split])")
    if p.is_dir():
        raise DataError(label, "is a folder; give a data file (.json, .jsonl, .csv, .tsv, .parquet)")
    if fmt == ".parquet" and not compressed:
        rows = _read_parquet(p, label)
    elif fmt in _TEXT_FORMATS:
        text = _read_text(p, label, compressed)
        if not text.strip():
            raise DataError(label, "file is empty")
        if fmt == ".json":
            rows = _parse_json(text, label)
        elif fmt in (".jsonl", ".ndjson"):
            rows = _parse_jsonl(text, label)
        else:
            rows = _parse_csv(text, label, "\t" if fmt == ".tsv" else ",")
    else:
        raise DataError(label, f"unsupported file type '{p.suffix or p.name}'; use .json, .jsonl, "
                               ".csv, .tsv (optionally .gz) or .parquet, or a Hugging Face dataset name")
    if not rows:
        raise DataError(label, "holds no records")
    return label, rows


def _read_text(p: Path, label: str, compressed: bool) -> str:
    raw = gzip.decompress(p.read_bytes()) if compressed else p.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as exc:
        raise DataError(label, f"not UTF-8 text (byte {exc.start + 1}); re-save the file as UTF-8",
                        line=raw.count(b"\n", 0, exc.start) + 1) from None


def _parse_json(text: str, label: str) -> list[tuple[dict, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # Many exports (pandas, HF `to_json`) write JSON Lines under a .json name.
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return _parse_jsonl(text, label)
        raise DataError(label, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        key = next((k for k in _WRAPPER_KEYS if k in lists), lists[0] if len(lists) == 1 else None)
        if key is None:
            raise DataError(label, "expected a list of records, or an object holding one under "
                                   f"'data'; found an object with keys {_names(data)}")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(label, f"expected a list of records, got {_kind(data)}")
    rows = []
    for n, rec in enumerate(data, 1):
        if not isinstance(rec, dict):
            raise DataError(label, f"expected an object with fields, got {_kind(rec)}", record=n)
        rows.append(({"record": n}, rec))
    return rows


def _parse_jsonl(text: str, label: str) -> list[tuple[dict, dict]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(label, f"invalid JSON: {exc.msg} (column {exc.colno})", line=n) from None
        if not isinstance(rec, dict):
            raise DataError(label, f"expected a JSON object, got {_kind(rec)}", line=n)
        rows.append(({"line": n}, rec))
    return rows


def _parse_csv(text: str, label: str, delimiter: str) -> list[tuple[dict, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, [])
    dupes = {h for h in header if header.count(h) > 1}
    if dupes:
        raise DataError(label, f"duplicate column name(s) {_names(dupes)} in the header", line=1)
    rows, previous = [], reader.line_num
    for row in reader:
        # Line numbers as an editor shows them (header = line 1); a quoted cell may span lines.
        start, previous = previous + 1, reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(label, f"row has {len(row)} values but the header has {len(header)} columns",
                            line=start)
        rows.append(({"line": start}, dict(zip(header, row))))
    return rows


def _read_parquet(p: Path, label: str) -> list[tuple[dict, dict]]:
    import pyarrow.parquet as pq
    try:
        records = pq.read_table(p).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt or non-Parquet files
        raise DataError(label, f"cannot read Parquet file ({_first_line(exc)})") from None
    return [({"record": n}, rec) for n, rec in enumerate(records, 1)]


def _hub_reachable() -> bool:
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing behind a proxy; let `datasets` try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        return True
    except OSError:
        return False


def _read_hub(name: str) -> list[tuple[dict, dict]]:
    """``org/name``, ``org/name:split`` or ``org/name:config:split`` (split defaults to train)."""
    repo, *rest = name.split(":")
    config, split = (None, rest[0] if rest else "train") if len(rest) < 2 else rest
    # Offline, `datasets` retries for ~25 s printing a warning each time; probe once and say so plainly.
    # HF_HUB_OFFLINE=1 skips the probe so that a cached copy can still be used.
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false") and not _hub_reachable():
        raise DataError(name, "not a local file, and the Hugging Face hub is unreachable; give a local "
                              "file, or set HF_HUB_OFFLINE=1 to use a cached copy")
    try:
        import datasets
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # hub, auth, missing split, script errors: all one message for the user
        raise DataError(name, f"cannot load '{repo}' (config {config}, split {split}) from the "
                              f"Hugging Face hub: {_first_line(exc)}") from None
    return [({"record": n}, dict(rec)) for n, rec in enumerate(ds, 1)]


# ------------------------------------------------------------------------------------------- examples

def load_examples(path, *, shape: str = "auto", columns: dict[str, str] | None = None,
                  limit: int | None = None) -> list[Example]:
    """Load, detect the shape, validate every record, and return the first ``limit`` examples.

    All records are validated (not only the first ``limit``) so that a file is valid or not whatever
    the limit, and ids do not depend on it either.
    """
    if shape != "auto" and shape not in SHAPES:
        raise ConfigError(f"unknown data shape '{shape}'; accepted: auto, {', '.join(SHAPES)}")
    unknown = set(columns or {}) - set(ROLES)
    if unknown:
        raise ConfigError(f"unknown column role(s) {_names(unknown)}; accepted: {', '.join(ROLES)}")
    if columns and shape in CHAT_SHAPES:
        raise ConfigError(f"columns= applies to flat shapes ({', '.join(FLAT_SHAPES)}), not '{shape}'")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be 0 or more, got {limit}")
    label, rows = _read(path)
    first_where, first = rows[0]
    shape = shape if shape != "auto" else _detect(first, columns)
    if shape is None:
        raise DataError(label, f"cannot tell the data shape; fields found: {_names(_fields(first))}; "
                               f"accepted shapes: {_SHAPE_HELP}", **first_where)
    cols = {**FLAT_SHAPES[shape], **(columns or {})} if shape in FLAT_SHAPES else {}
    parsed, problems = [], []
    for where, rec in rows:
        try:
            parsed.append(_parse(rec, shape, cols))
        except _Bad as bad:
            problems.append((where, bad))
    if problems:
        where, bad = problems[0]
        # One line, but say how much else is wrong so that fixes do not come one rerun at a time.
        more = f" ({len(problems) - 1} more bad record(s) in this file)" if len(problems) > 1 else ""
        raise DataError(label, bad.message + more, field=bad.field, **where)
    ids = _ids([rec for _, rec in rows], cols.get("id", "id"), parsed)
    examples = [Example(id=i, instruction=ins, response=resp, history=hist, system=system, source=rec,
                        shape=shape, location=_location(label, where), columns=dict(cols))
                for i, (where, rec), (ins, resp, hist, system) in zip(ids, rows, parsed)]
    return examples if limit is None else examples[:limit]


def _fields(rec: dict) -> list[str]:
    return [k for k in rec if k != DISTILL_KEY]


def _detect(rec: dict, columns: dict | None) -> str | None:
    keys = set(_fields(rec))
    if not columns:
        for name, key in CHAT_SHAPES.items():
            if key in keys:
                return name
    candidates = {name: {**cols, **(columns or {})} for name, cols in FLAT_SHAPES.items()}
    # Prefer a shape whose instruction and response are both present; else the first whose instruction
    # is, so that e.g. {"instruction", "response"} reports "missing field 'output'" with a hint.
    for need in (("instruction", "response"), ("instruction",)):
        for name, cols in candidates.items():
            if all(cols[role] in keys for role in need):
                return name
    return None


def _parse(rec: dict, shape: str, cols: dict) -> tuple[str, str, list[tuple[str, str]], str | None]:
    """(instruction, response, history, system) of one record, or raise _Bad."""
    if DISTILL_KEY in rec:
        _check_distilled(rec[DISTILL_KEY])
    if shape in CHAT_SHAPES:
        return _parse_chat(rec, CHAT_SHAPES[shape])
    instruction = _text(rec, cols["instruction"], required=True)
    if not instruction.strip():
        raise _Bad("empty instruction", cols["instruction"])
    extra = _text(rec, cols["input"], required=False) if "input" in cols else ""
    if extra.strip():
        instruction = f"{instruction}\n\n{extra}"
    response = _text(rec, cols["response"], required=True)
    if not response.strip():
        raise _Bad("empty response", cols["response"])
    system = _text(rec, cols["system"], required=False) if "system" in cols else ""
    history = []
    hist_key = cols.get("history")
    if hist_key and rec.get(hist_key) is not None:
        if not isinstance(rec[hist_key], list):
            raise _Bad(f"expected a list of [user, assistant] pairs, got {_kind(rec[hist_key])}", hist_key)
        for i, pair in enumerate(rec[hist_key]):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise _Bad(f"expected a [user, assistant] pair of texts, got {_kind(pair)}", f"{hist_key}[{i}]")
            history.append((pair[0], pair[1]))
    return instruction, response, history, system or None


def _parse_chat(rec: dict, key: str) -> tuple[str, str, list[tuple[str, str]], str | None]:
    turns = rec.get(key)
    if not isinstance(turns, list):
        raise _Bad(f"expected a list of messages, got {_kind(turns)}", key)
    parsed = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _Bad(f"expected a message object, got {_kind(turn)}", f"{key}[{i}]")
        role_key = "role" if "role" in turn else "from"
        role = _ROLE_NAMES.get(str(turn.get(role_key)).lower())
        if role is None:
            raise _Bad(f"unknown role {turn.get(role_key)!r}; accepted: {', '.join(_ROLE_NAMES)}",
                       f"{key}[{i}].{role_key}")
        text_key = "content" if "content" in turn else "value"
        text = turn.get(text_key)
        if isinstance(text, list):  # OpenAI content parts: [{"type": "text", "text": ...}, ...]
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(text, str):
            raise _Bad(f"expected text, got {_kind(text)}", f"{key}[{i}].{text_key}")
        parsed.append((role, text, f"{key}[{i}].{text_key}"))
    system = [text for role, text, _ in parsed if role == "system"]
    rest = parsed[len(system):]
    top_system = _text(rec, "system", required=False)  # sharegpt files may put it at top level
    for j, (role, _, where) in enumerate(rest):
        expected = "user" if j % 2 == 0 else "assistant"
        if role != expected:
            raise _Bad(f"expected a '{expected}' message here, found '{role}' (after any system "
                       "messages, turns alternate user, assistant, ...)", where.rsplit(".", 1)[0])
    if not rest or rest[-1][0] != "assistant":
        raise _Bad("the last message must be the assistant's response", key)
    if not rest[-1][1].strip():
        raise _Bad("empty response", rest[-1][2])
    if not rest[-2][1].strip():
        raise _Bad("empty instruction (the last user message)", rest[-2][2])
    history = [(rest[j][1], rest[j + 1][1]) for j in range(0, len(rest) - 2, 2)]
    return rest[-2][1], rest[-1][1], history, "\n\n".join([top_system] * bool(top_system) + system) or None


def _check_distilled(meta) -> None:
    if not isinstance(meta, dict):
        raise _Bad(f"expected the distillation record {{accepted, reason, rewrite, original}}, got {_kind(meta)}",
                   DISTILL_KEY)
    for key, types in (("accepted", bool), ("reason", str), ("rewrite", (str, type(None))), ("original", str)):
        if key not in meta or not isinstance(meta[key], types):
            raise _Bad(f"missing or wrong type ({_kind(meta.get(key))})", f"{DISTILL_KEY}.{key}")
    if meta["accepted"] and not meta["rewrite"]:
        raise _Bad("an accepted rewrite must be non-empty text", f"{DISTILL_KEY}.rewrite")


def _text(rec: dict, key: str, *, required: bool) -> str:
    value = rec.get(key)
    if value is None:  # absent, JSON null, or an empty Parquet cell
        if required:
            found = " (it is null)" if key in rec else f" (fields found: {_names(_fields(rec))})"
            raise _Bad(f"missing required field{found}", key)
        return ""
    if not isinstance(value, str):
        raise _Bad(f"expected text, got {_kind(value)}", key)
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
    for n, (instruction, _, history, system) in enumerate(parsed, 1):
        digest = hashlib.sha1(json.dumps([system, history, instruction], ensure_ascii=False).encode())
        ids.append(f"{n:06d}-{digest.hexdigest()[:8]}")
    return ids


# ---------------------------------------------------------------------------------- writing / training

def with_response(example: Example, text: str) -> dict:
    """A copy of the example's original record with only its response replaced."""
    record = copy.deepcopy(example.source)
    if example.shape in CHAT_SHAPES:
        last = record[CHAT_SHAPES[example.shape]][-1]
        last["content" if "content" in last else "value"] = text
    else:
        record[(example.columns or FLAT_SHAPES[example.shape])["response"]] = text
    return record


def is_distilled(example: Example) -> bool:
    """Whether the example comes from a ``distilled.jsonl`` (carries the ``sdft`` record)."""
    return isinstance(example.source.get(DISTILL_KEY), dict)


def pick_response(example: Example, use_rewrite: bool) -> str:
    """The training target: the accepted rewrite if ``use_rewrite``, else the original response."""
    if not is_distilled(example):
        return example.response
    meta = example.source[DISTILL_KEY]
    if use_rewrite and meta["accepted"] and meta.get("rewrite"):
        return meta["rewrite"]
    return meta["original"]


# ------------------------------------------------------------------------------------------------ util

def _kind(value) -> str:
    """How a JSON value reads in a message: 'a number (42)', 'a list of 2', ..."""
    if value is None or isinstance(value, (bool, int, float)):
        return {type(None): "nothing (null)", bool: f"a boolean ({value})"}.get(type(value), f"a number ({value})")
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def _names(items) -> str:
    return ", ".join(map(str, items)) or "(none)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]

