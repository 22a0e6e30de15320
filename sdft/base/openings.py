"""How an answer opens: numbered list, bulleted list, code block, heading, or prose.

Below the stages because three use it: the evaluation stage records each answer's class in its per-item
scores (``sdft.base.item_scores``: the class, never the text, which for AdvBench can be harmful), the report
counts the classes of training targets and answers (``sdft.report.openings``), and distillation's format
guard (``--format-guard``) rejects exactly what the report counts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PROSE = "prose"
# First match wins; an answer opening with none of these is prose.
_KINDS = (("numbered list", re.compile(r"\s*(?:1[.)]\s|step 1\b)", re.IGNORECASE)),
          ("bulleted list", re.compile(r"\s*[-*•]\s")),
          ("code block", re.compile(r"\s*```")),
          ("heading", re.compile(r"\s*(?:#{1,6}\s|\*\*[^*\n]{1,80}\*\*:?\s*\n)")))
KINDS = tuple(name for name, _ in _KINDS) + (PROSE,)


def opening(text: str | None) -> str:
    """How an answer starts: one of :data:`KINDS`."""
    for name, pattern in _KINDS:
        if pattern.match(text or ""):
            return name
    return PROSE


def counts(texts: Sequence[str | None]) -> dict[str, int]:
    return tally(opening(text) for text in texts)


def tally(kinds) -> dict[str, int]:
    """``{kind: how many}`` over already classified answers, every kind present (zero or not)."""
    found = dict.fromkeys(KINDS, 0)
    for kind in kinds:
        found[kind] += 1
    return found
