"""How an answer opens: prose, a numbered list, a bulleted list, a code block or a heading.

Shared by the report's "How answers open" section and distillation's format guard (``--format-guard``), so
that the guard rejects exactly what the report counts.
"""

from __future__ import annotations

import re

PROSE = "prose"
# First match wins; an answer opening with none of these is prose.
_KINDS = (("numbered list", re.compile(r"\s*(?:1[.)]\s|step 1\b)", re.I)),
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
