"""Task data: load JSON / JSONL / CSV / Parquet files (or hub datasets) into :class:`Example` objects.

(Loader implementation pending: see the functions below for the contract.)
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
