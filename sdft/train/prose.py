"""Training targets with their list enumeration removed: the same content as prose (the ``sdft-prose`` arm).

SDFT's rewrites on a chat seed often open with a numbered list where the seed's own answers never do, and
the SDFT models then refuse less. Training on the accepted rewrites with only the list markers taken out
tests whether the format carries the effect: every word stays, in the same order; a run of list items
(numbered ``1.``/``2)``, or bulleted ``-``/``*``/``+``/``•``, with their indented continuation lines) becomes one
paragraph, each item ending in a full stop unless it ends in punctuation already. Fenced code blocks are
left alone.
"""

from __future__ import annotations

import re

from sdft.base.errors import ConfigError

_ITEM = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*+\u2022])\s+(?P<text>\S.*)$")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")  # a horizontal rule ("* * *", "---"), not a list
_FENCE = re.compile(r"^\s*(```|~~~)")


def without_enumeration(text: str) -> str:
    """``text`` with each run of list items joined into one paragraph, markers removed."""
    out: list = []  # lines, and for each run of items the list of their texts
    paragraph: list[str] | None = None
    fence = None  # the marker of the open code fence: only the same marker closes it
    for line in text.split("\n"):
        marker = _FENCE.match(line)
        if marker and fence is None:
            fence = marker[1]
        elif marker and marker[1] == fence:
            fence = None
        fenced = fence is not None or marker is not None
        item = None if fenced or _RULE.match(line) else _ITEM.match(line)
        if item:
            paragraph = _start_or_extend(out, paragraph)
            paragraph.append(item["text"].strip())
        elif paragraph is not None and not fenced and line.strip() and line[:1].isspace() and out[-1] is paragraph:
            paragraph[-1] += " " + line.strip()  # an item's indented continuation line
        elif paragraph is not None and not line.strip():
            out.append("")  # a blank line may separate items of one list: the next line decides
        else:
            paragraph = None
            out.append(line)
    return "\n".join(" ".join(map(_sentence, line)) if isinstance(line, list) else line for line in out)


def _start_or_extend(out: list, paragraph: list | None) -> list:
    """The paragraph an item joins: the current one (dropping blank lines between items), else a new one."""
    if paragraph is not None:
        while out and out[-1] == "":
            out.pop()
        return paragraph
    paragraph = []
    out.append(paragraph)
    return paragraph


def _sentence(text: str) -> str:
    return text if not text or text[-1] in ".!?:;" else text + "."


def prose_pairs(pairs: list) -> tuple[list, int]:
    """``(example, target, rewritten)`` pairs with the enumeration removed from the rewritten targets (the
    originals of rejected rewrites stay as they are, as in the sdft arm), and how many changed."""
    out, changed = [], 0
    for example, target, rewritten in pairs:
        if not rewritten:
            out.append((example, target, rewritten))
            continue
        if not isinstance(target, str):
            raise ConfigError(f"prose_targets: example {example.id} has a multi-turn target; the prose "
                              "ablation takes single-turn text targets")
        prose = without_enumeration(target)
        changed += prose != target
        out.append((example, prose, rewritten))
    return out, changed
