"""Reading files the user names: regular files only, and strict JSON / YAML.

Why strict: a data or config file is input we do not control, and the lenient defaults of the standard
parsers turn some mistakes into silent wrong results or into hangs and tracebacks:

* a FIFO or a device "file" blocks ``open`` / ``read`` forever (or streams without end);
* a key given twice in one JSON object or YAML mapping silently keeps the last value;
* ``"\\ud800"`` in JSON gives a string that is not valid Unicode and fails much later, when written;
* deeply nested JSON exhausts the parser's recursion; a YAML file whose aliases (``*name``) expand
  exponentially ("billion laughs") fills memory once anything walks the loaded value;
* a small ``.gz`` file can hold gigabytes: 2 MB holding one 2 GiB line drove ``sdft distill`` past
  6.5 GB of memory. Data files are read in chunks, a line (JSON Lines, CSV) at most ``MAX_LINE_BYTES``
  and a decompressed file at most ``MAX_DECOMPRESSED_BYTES``.

Each case becomes one :class:`DataError` / :class:`ConfigError` naming the file, line or record, field.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path

import yaml

from sdft.base.errors import ConfigError, DataError

MAX_DEPTH = 100          # nesting levels of a JSON / YAML value; real records use fewer than 10
MAX_YAML_VALUES = 100_000  # values a YAML document may hold once its aliases are expanded
MAX_LINE_BYTES = 64 << 20  # one line of a line-based data file; real records are kilobytes
MAX_DECOMPRESSED_BYTES = 1 << 30  # a whole compressed data file, once decompressed
_CHUNK = 1 << 20

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(path: str | Path) -> str | None:
    """What a path is when it exists but is neither a regular file nor a folder (``stat`` never blocks)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((name for test, name in _KINDS if test(mode)), None)


def check_regular(path: str | Path) -> None:
    """Refuse a FIFO, device or socket before opening it: reading one can block forever."""
    what = special_kind(path)
    if what:
        raise DataError(path, f"is {what}, not a regular file; give a data file")


def read_bounded(path: str | Path, label: str, *, compressed: bool, by_line: bool) -> bytes:
    """The bytes of a data file (gunzipped if ``compressed``), read in chunks so that an absurd line
    (``by_line``: JSON Lines, CSV) or a decompression bomb stops at its bound with a DataError naming
    the file (and line) rather than filling memory. gzip's own errors pass through."""
    parts, total, lines, run = [], 0, 0, 0  # run: bytes since the last newline
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            first = chunk.find(b"\n")
            if by_line and run + (len(chunk) if first < 0 else first) > MAX_LINE_BYTES:
                raise DataError(label, f"line longer than {MAX_LINE_BYTES >> 20} MiB"
                                       + (" once decompressed" if compressed else "")
                                       + "; a record that long is not data sdft can use", line=lines + 1)
            run = run + len(chunk) if first < 0 else len(chunk) - chunk.rfind(b"\n") - 1
            lines, total = lines + chunk.count(b"\n"), total + len(chunk)
            if compressed and total > MAX_DECOMPRESSED_BYTES:
                raise DataError(label, f"more than {MAX_DECOMPRESSED_BYTES >> 30} GiB once decompressed; "
                                       "decompress it yourself and give the plain file if that is meant")
            parts.append(chunk)
    return b"".join(parts)


# --------------------------------------------------------------------------------------------------- JSON

class _Duplicated(dict):
    """An object in which some key appeared twice (``key`` is the first such key)."""

    key: str = ""


def _pairs_hook(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        dup = _Duplicated(obj)
        dup.key = next(k for k, _ in pairs if k in seen or seen.add(k))
        return dup
    return obj


def duplicated_key(obj) -> str | None:
    """The first key given twice in this parsed object (not its children), else None."""
    return obj.key if isinstance(obj, _Duplicated) else None


def loads_json(text: str):
    """``json.loads`` that marks objects with a repeated key (see :func:`problem`) and turns excessive
    nesting into a ``ValueError`` instead of a ``RecursionError``."""
    try:
        return json.loads(text, object_pairs_hook=_pairs_hook)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None


def problem(value) -> tuple[str | None, str] | None:
    """The first thing in a parsed JSON value that we refuse: ``(field path, message)``, else None.

    Iterative, so that a deep value cannot exhaust the stack here either.
    """
    stack = [(value, None, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return where.partition("[")[0] or None, f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(item, str):
            bad = lone_surrogate(item)
            if bad:
                return where, bad
        elif isinstance(item, dict):
            if duplicated_key(item):
                return where, f"key '{item.key}' appears twice in one object (which value is meant?)"
            for key, child in item.items():
                bad = lone_surrogate(key)
                if bad:
                    return where, bad
                stack.append((child, key if where is None else f"{where}.{key}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{where or ''}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


def lone_surrogate(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"text holds a lone surrogate (\\u{ord(text[exc.start]):04x}, character {exc.start + 1}), "
                "which is not valid Unicode; fix the escape or re-export the file")
    return None


# --------------------------------------------------------------------------------------------------- YAML

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (merge keys ``<<`` may still override)."""

    source = "YAML"

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise ConfigError(f"{self.source}: line {key_node.start_mark.line + 1}: key '{key}' appears "
                                      f"twice in one mapping (first on line {seen[key] + 1}; which value is meant?)")
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root) -> int:
    """How many values the node graph holds with every alias expanded, counted without expanding it.

    Aliases make the graph a DAG whose nodes are shared; sizes are memoized per node, so a file of a
    few lines that expands to billions of values is measured in linear time. A cycle is refused.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        ident = id(node)
        kids = [] if isinstance(node, yaml.ScalarNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if children_done:
            on_path.discard(ident)
            sizes[ident] = 1 + sum(sizes[id(k)] for k in kids)
            if sizes[ident] > MAX_YAML_VALUES:
                return sizes[ident]
            continue
        if ident in sizes:
            continue
        if ident in on_path:
            raise ValueError("an alias (*name) refers to a value that contains it (a recursive structure)")
        on_path.add(ident)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def _depth(root) -> int:
    deepest, stack = 0, [(root, 1)]
    seen: set[int] = set()
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if id(node) in seen or isinstance(node, yaml.ScalarNode) or depth > MAX_DEPTH:
            continue
        seen.add(id(node))
        kids = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        stack.extend((k, depth + 1) for k in kids)
    return deepest


def loads_yaml(text: str, source: str):
    """One YAML document, bounded and without duplicate keys; errors are a ConfigError naming ``source``."""
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader already refuses control characters
        loader.source = source
        node = loader.get_single_node()
        if node is None:
            return None
        if _depth(node) > MAX_DEPTH:
            raise ConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep")
        if _expanded_size(node) > MAX_YAML_VALUES:
            raise ConfigError(f"{source}: its aliases (*name) expand to more than {MAX_YAML_VALUES} values; "
                              "refusing to load it (write the values out instead)")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise ConfigError(f"{source}:{where} is not valid YAML ({getattr(exc, 'problem', None) or exc})") \
            from None
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else f"nested more than {MAX_DEPTH} levels deep"
        raise ConfigError(f"{source}: {reason}") from None
    finally:
        if loader is not None:
            loader.dispose()
