"""Instruction sets as the AlpacaEval-style tasks (``alpaca_eval``, ``winrate``) read them: records of an
instruction (``instruction``, ``prompt`` or ``question``) and an optional ``input``, from a user's file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sdft.base import carriers

INSTRUCTION_FIELDS = ("instruction", "prompt", "question")


@dataclass(frozen=True)
class Instruction:
    id: str  # the record's own id, else TASK-NNNN by position
    text: str  # the instruction field alone
    input: str  # the record's non-blank input as written, or ""
    location: str  # file and line, for errors about the record's other fields
    record: dict

    def with_input(self, *, strip: bool = False) -> str:
        """The instruction and its input joined by a blank line (the Alpaca way). ``strip`` trims the input
        first: alpaca_eval always did, winrate never did, and each keeps its prompts (and cached answers)."""
        extra = self.input.strip() if strip else self.input
        return f"{self.text}\n\n{extra}" if extra else self.text


def read_instructions(task: str, path: str) -> tuple[Iterator[Instruction], str]:
    """The instructions of a user's file (or hub dataset name), in order, and its provenance string.

    The file is read now; records are checked as they are iterated, so a task that picks more fields of
    each record reports the first bad record of the file, whichever field is missing."""
    records, source = carriers.user_records(path)
    return (_instruction(task, i, location, record) for i, (location, record) in enumerate(records)), source


def _instruction(task: str, index: int, location: str, record: dict) -> Instruction:
    raw = record.get("input")
    extra = str(raw) if raw and str(raw).strip() else ""
    return Instruction(str(record.get("id", f"{task}-{index:04d}")),
                       carriers.pick(record, INSTRUCTION_FIELDS, location), extra, location, record)
