"""User-facing errors: the CLI prints these as one message, without a traceback."""

from __future__ import annotations

import errno
import os

_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                                                    127: "\\x7f"}


class SdftError(Exception):
    """An error caused by the user's input or environment, not by a bug in sdft. Its message is one line:
    control characters that came from the input (a key holding a newline, say) are shown escaped."""

    def __init__(self, message: str = "", *args):
        super().__init__(str(message).translate(_CONTROL), *args)


class DataError(SdftError):
    """Bad input data. Names the file, the line or record, and the field, whichever are known."""

    def __init__(self, path, message: str, *, line: int | None = None,
                 record: int | None = None, field: str | None = None):
        where = [str(path)]
        if line is not None:
            where.append(f"line {line}")
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        self.path, self.line, self.record, self.field = path, line, record, field
        super().__init__(f"{', '.join(where)}: {message}")


class ConfigError(SdftError):
    """A bad configuration value or file."""


# Signs of a full disk in errors that libraries raise without an errno (torch's writer, safetensors).
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "StorageFull", "Disk quota exceeded")
# torch.save reports ENOSPC only like these: its zip writer's C++ stream fails, and then its end-of-file
# check ("[enforce fail at inline_container.cc] . unexpected pos 64 vs 0").
_WRITE_FAILED_TEXT = ("file write failed", "failed writing file", "basic_ios::clear: iostream error",
                      "] . unexpected pos ")
_OS_PROBLEMS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EMFILE: "too many open files"}


def path_problem(exc: BaseException) -> str | None:
    """One line for a path the file system cannot hold (a name over 255 bytes, usually): a mistake in
    the command, not the machine's fault; None for anything else."""
    for cause in _chain(exc):
        if isinstance(cause, OSError) and cause.errno == errno.ENAMETOOLONG:
            path = os.fsdecode(cause.filename) if cause.filename is not None else ""
            longest = max((len(os.fsencode(part)) for part in path.split(os.sep)), default=0)
            shown = path if len(path) <= 100 else f"{path[:60]}...{path[-30:]}"
            return (f"file name too long: {shown!r} (a name of {longest} bytes; the file system allows "
                    f"{_name_max(path)})" if longest else f"file name too long: {shown!r}")
    return None


def _name_max(path: str) -> int:
    folder = os.path.dirname(path) or "."
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return os.pathconf(folder or ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def environment_problem(exc: BaseException) -> str | None:
    """One line for an error of the machine rather than of sdft (disk full, read-only, no permission),
    looking through the chain of causes; None for anything else (a bug, which keeps its traceback)."""
    for cause in _chain(exc):
        if isinstance(cause, OSError) and cause.errno in _OS_PROBLEMS:
            where = f" ({cause.filename})" if cause.filename else ""
            return f"{_OS_PROBLEMS[cause.errno]}{where}"
        if any(text in str(cause) for text in _DISK_FULL_TEXT):
            return "disk full"
        if any(text in str(cause) for text in _WRITE_FAILED_TEXT):
            return "a file write failed (is the disk full?)"
    return None
