"""Markdown tables and sections of the report (shared by its section modules)."""

from __future__ import annotations


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
              for row in rows]
    return "\n".join(lines)


def section(title: str, header: list[str], rows: list[list], caption: str) -> str:
    return f"## {title}\n\n{table(header, rows)}\n\n{caption}\n"
