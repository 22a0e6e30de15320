"""User-facing errors: the CLI prints these as one message, without a traceback."""

from __future__ import annotations

import errno

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
_OS_PROBLEMS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EMFILE: "too many open files"}


def environment_problem(exc: BaseException) -> str | None:
    """One line for an error of the machine rather than of sdft (disk full, read-only, no permission),
    looking through the chain of causes; None for anything else (a bug, which keeps its traceback)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _OS_PROBLEMS:
            where = f" ({exc.filename})" if exc.filename else ""
            return f"{_OS_PROBLEMS[exc.errno]}{where}"
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return "disk full"
        if "file write failed" in str(exc):  # torch.save reports ENOSPC only like this
            return "a file write failed (is the disk full?)"
        exc = exc.__cause__ or exc.__context__
    return None
