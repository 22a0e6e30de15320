"""One writer per run folder, and an ``--out`` that is checked before anything slow starts.

Two processes writing the same folder would both do all the work and race on its files. ``claim`` takes
an exclusive ``flock`` on ``<out>/.sdft.lock`` and writes who holds it (pid, host, command, start time),
so a second process stops at once and says who to wait for. The kernel drops the lock when its holder
exits in any way (``kill -9`` included), so a crash never leaves a stale lock behind.

Claiming also checks ``--out`` itself, before any model is loaded: it must not be an existing file, and
the folder must be creatable and writable.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import time
from pathlib import Path

from sdft.base.errors import SdftError

LOCK_NAME = ".sdft.lock"
_held: dict[Path, int] = {}  # folder -> lock file descriptor; a process may re-enter its own folder


def check_out(folder: Path) -> None:
    """``--out`` must be a folder we can create and write into."""
    if folder.exists() and not folder.is_dir():
        raise SdftError(f"--out {folder} is an existing file, not a folder; choose a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SdftError(f"--out {folder}: cannot create the folder ({exc.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SdftError(f"--out {folder}: cannot write in the folder (no write permission)")


def holder(folder: Path) -> str:
    """Who holds the lock, as written by its holder (best effort: it may be mid-write)."""
    try:
        info = json.loads((folder / LOCK_NAME).read_text())
        return (f"pid {info['pid']} on {info['host']} since {info['since']} "
                f"(command: {info['command']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _is_secondary_rank() -> bool:
    """Ranks > 0 of a multi-process launch write nothing of their own; rank 0 holds the lock for all."""
    try:
        return int(os.environ.get("RANK", "0") or 0) > 0
    except ValueError:
        return False


def _acquire(folder: Path, command: str) -> int:
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SdftError(f"--out {folder}: cannot write in the folder ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SdftError(f"{folder} is in use by {holder(folder)}; wait for it to finish, or use another "
                        "--out") from None
    info = {"pid": os.getpid(), "host": platform.node(), "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


@contextlib.contextmanager
def claim(folder: str | Path, command: str = ""):
    """Hold ``folder`` for this process while the block runs (re-entrant within the process)."""
    folder = Path(folder)
    check_out(folder)
    key = folder.resolve()
    if key in _held or _is_secondary_rank():
        yield folder
        return
    _held[key] = _acquire(folder, command)
    try:
        yield folder
    finally:
        fd = _held.pop(key)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
