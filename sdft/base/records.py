"""Read data files into ``(location, record)`` pairs: JSON, JSON Lines, CSV/TSV (optionally gzipped),
Parquet, or a Hugging Face dataset name.

Every record keeps where it came from (``{"line": n}`` or ``{"record": n}``) so that any later
complaint about it names the file and line; :mod:`sdft.base.data` turns records into examples, and the
evaluation tasks and carriers read their files through :func:`load_records`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
import zlib
from pathlib import Path

from sdft.base import hub, userfiles
from sdft.base.errors import DataError

# The csv module refuses fields over 128 KiB by default; long documents and code are legitimate data.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

_TEXT_FORMATS = {".json", ".jsonl", ".ndjson", ".csv", ".tsv"}
# Keys under which JSON files commonly wrap their list of records.
_WRAPPER_KEYS = ("data", "examples", "records", "rows", "instances", "items", "train")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+){0,2}$")

def load_records(path) -> list[tuple[str, dict]]:
    """``(location, record)`` pairs of a file or hub dataset, e.g. ``("data.jsonl, line 3", {...})``."""
    label, rows = read_source(path)
    return [(location(label, where), rec) for where, rec in rows]


def location(label: str, where: dict) -> str:
    return ", ".join([label] + [f"{k} {v}" for k, v in where.items()])


def read_source(path) -> tuple[str, list[tuple[dict, dict]]]:
    """The label used in messages and ``(where, record)`` pairs; ``where`` is ``{"line": n}`` or
    ``{"record": n}``, the keyword DataError takes."""
    label = str(path)
    p = Path(label)
    suffixes = [s.lower() for s in p.suffixes]
    compressed = p.suffix.lower() == ".gz"
    fmt = (suffixes[-2] if len(suffixes) > 1 else "") if compressed else p.suffix.lower()
    if not p.exists():
        if fmt not in _TEXT_FORMATS | {".parquet"} and _HUB_NAME.match(label) and not _local_typo(p):
            return label, _read_hub(label)
        raise DataError(label, "no such file, and not a Hugging Face dataset name (org/name[:split])")
    if p.is_dir():
        raise DataError(label, "is a folder; give a data file (.json, .jsonl, .csv, .tsv, .parquet)")
    userfiles.check_regular(p)
    if fmt == ".parquet" and not compressed:
        rows = _read_parquet(p, label)
    elif fmt in _TEXT_FORMATS:
        text = _read_text(p, label, compressed, by_line=fmt != ".json")
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


def _local_typo(p: Path) -> bool:
    """``data/trian`` where ``data/`` is a local folder: a mistyped path, not a hub dataset."""
    return p.parent != Path(".") and p.parent.is_dir()


def looks_local(name: str) -> bool:
    """A file path rather than a hub dataset name (``org/name:split``): absolute or ``./`` paths, data
    file suffixes, and names whose folder exists here (a mistyped path is never sent to the hub)."""
    p = Path(name)
    return bool(name) and (p.is_absolute() or name.startswith(".") or _local_typo(p)
                           or p.suffix.lower() in _TEXT_FORMATS | {".parquet", ".gz"})


def _read_text(p: Path, label: str, compressed: bool, by_line: bool) -> str:
    try:
        raw = userfiles.read_bounded(p, label, compressed=compressed, by_line=by_line)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # truncated: EOFError
        raise DataError(label, f"not a readable gzip file ({first_line(exc) or 'truncated'}); "
                               "re-compress it or give the plain file") from None
    try:
        return raw.decode("utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as exc:
        raise DataError(label, f"not UTF-8 text (byte {exc.start + 1}); re-save the file as UTF-8",
                        line=raw.count(b"\n", 0, exc.start) + 1) from None


def _parse_json(text: str, label: str) -> list[tuple[dict, dict]]:
    try:
        data = userfiles.loads_json(text)
    except json.JSONDecodeError as exc:
        # Many exports (pandas, HF `to_json`) write JSON Lines under a .json name.
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return _parse_jsonl(text, label)
        raise DataError(label, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except ValueError as exc:  # nested too deeply
        raise DataError(label, str(exc)) from None
    if isinstance(data, dict):
        if userfiles.duplicated_key(data):  # e.g. {"data": [...], "data": [...]}: which list is meant?
            raise DataError(label, f"key '{userfiles.duplicated_key(data)}' appears twice in the top-level object")
        lists = [k for k, v in data.items() if isinstance(v, list)]
        key = next((k for k in _WRAPPER_KEYS if k in lists), lists[0] if len(lists) == 1 else None)
        if key is None:
            raise DataError(label, "expected a list of records, or an object holding one under "
                                   f"'data'; found an object with keys {names(data)}")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(label, f"expected a list of records, got {kind(data)}")
    rows = []
    for n, rec in enumerate(data, 1):
        if not isinstance(rec, dict):
            raise DataError(label, f"expected an object with fields, got {kind(rec)}", record=n)
        _check_record(rec, label, {"record": n})
        rows.append(({"record": n}, rec))
    return rows


def _check_record(rec: dict, label: str, where: dict) -> None:
    """Refuse duplicate keys, lone surrogates and absurd nesting, naming the record and field."""
    bad = userfiles.problem(rec)
    if bad:
        field, message = bad
        raise DataError(label, message, field=field, **where)


def _parse_jsonl(text: str, label: str) -> list[tuple[dict, dict]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = userfiles.loads_json(line)
        except json.JSONDecodeError as exc:
            raise DataError(label, f"invalid JSON: {exc.msg} (column {exc.colno})", line=n) from None
        except ValueError as exc:  # nested too deeply
            raise DataError(label, str(exc), line=n) from None
        if not isinstance(rec, dict):
            raise DataError(label, f"expected a JSON object, got {kind(rec)}", line=n)
        _check_record(rec, label, {"line": n})
        rows.append(({"line": n}, rec))
    return rows


def _parse_csv(text: str, label: str, delimiter: str) -> list[tuple[dict, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        return _csv_rows(reader, label)
    except csv.Error as exc:  # e.g. a stray quote at the end of the file
        raise DataError(label, f"cannot parse as CSV ({first_line(exc)})", line=reader.line_num) from None


def _csv_rows(reader, label: str) -> list[tuple[dict, dict]]:
    header = next(reader, [])
    dupes = {h for h in header if header.count(h) > 1}
    if dupes:
        raise DataError(label, f"duplicate column name(s) {names(dupes)} in the header", line=1)
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
        raise DataError(label, f"cannot read Parquet file ({first_line(exc)})") from None
    return [({"record": n}, rec) for n, rec in enumerate(records, 1)]


def _read_hub(name: str) -> list[tuple[dict, dict]]:
    """``org/name``, ``org/name:split`` or ``org/name:config:split`` (split defaults to train)."""
    repo, *rest = name.split(":")
    config, split = (None, rest[0] if rest else "train") if len(rest) < 2 else rest
    # A path typo that looks like a hub name must fail in a second, not after `datasets` retried for
    # ~25 s: offline (or unreachable) only the local cache is tried; online, one metadata request first.
    if hub.reachable():
        missing = hub.missing_dataset(repo)
        if missing:
            raise DataError(name, f"no such local file, and {missing}")
    try:
        import datasets
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # hub, auth, missing split, script errors: all one message for the user
        where = "the Hugging Face hub" if hub.reachable() else f"the local cache ({hub.offline_reason()})"
        which = f"config {config}, split {split}" if config else f"split {split}"
        raise DataError(name, f"no such local file, and cannot load '{repo}' ({which}) from {where}: "
                              f"{first_line(exc)}") from None
    return [({"record": n}, dict(rec)) for n, rec in enumerate(ds, 1)]



def kind(value) -> str:
    """How a JSON value reads in a message: 'a number (42)', 'a list of 2', ..."""
    if value is None or isinstance(value, (bool, int, float)):
        return {type(None): "nothing (null)", bool: f"a boolean ({value})"}.get(type(value), f"a number ({value})")
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def names(items) -> str:
    return ", ".join(map(str, items)) or "(none)"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]

