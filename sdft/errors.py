"""User-facing errors: the CLI prints these as one message, without a traceback."""

from __future__ import annotations


class SdftError(Exception):
    """An error caused by the user's input or environment, not by a bug in sdft."""


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
