"""Crash-safe progress files: append JSON lines as work completes, resume without duplicates.

A job writes each finished record to ``<name>.partial.jsonl`` (flushed and fsynced per batch). After
``kill -9`` the last line may be cut off; on reopen that torn tail is dropped, so a record is either
fully written or redone. Final outputs are written atomically (``write_jsonl``, ``write_json``: a
temporary file, then a rename), in input order, by the stage that owns them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


def sdft_home() -> Path:
    """Cache root: ``$SDFT_HOME``, default ``~/.cache/sdft``."""
    return Path(os.environ.get("SDFT_HOME") or "~/.cache/sdft").expanduser()


class ProgressFile:
    def __init__(self, path: str | Path, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        good_bytes = 0
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn final line from a crash: redo that record
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    break
                self.records.setdefault(str(rec[self.key]), rec)
                good_bytes += len(raw)
        if good_bytes != self.path.stat().st_size:
            with open(self.path, "r+b") as fh:
                fh.truncate(good_bytes)

    def done(self, record_id: str) -> bool:
        return str(record_id) in self.records

    def append(self, records: Iterable[dict]) -> None:
        new = [r for r in records if str(r[self.key]) not in self.records]
        if not new:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            for rec in new:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for rec in new:
            self.records[str(rec[self.key])] = rec


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def append_json_entry(path: str | Path, key: str, entry: dict) -> None:
    """Add ``entry`` to the list under ``key`` in the JSON record ``path`` (made if absent): a history kept
    whole, one entry per event."""
    path = Path(path)
    history = json.loads(path.read_text())[key] if path.is_file() else []
    write_json(path, {key: [*history, entry]})


def write_text(path: str | Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all (a reader or a copy never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
