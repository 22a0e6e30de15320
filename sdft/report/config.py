"""`sdft report`'s settings."""

from __future__ import annotations

from dataclasses import dataclass

from sdft.base import layout
from sdft.base.config import field


@dataclass
class ReportConfig:
    run_dir: str = field(None, f"run folder (holds {layout.MANIFEST})", positional=True)


@dataclass
class StatsConfig:
    run_dir: str = field(None, f"run folder (holds {layout.MANIFEST} and each evaluation's "
                               f"{layout.ITEM_SCORES}/ files)", positional=True)
    export: str | None = field(None, f"also copy what the statistics read ({layout.MANIFEST} and every "
                                     f"evaluation's {layout.ITEM_SCORES}/: ids and verdicts, no answer text) "
                                     "into this folder, which `sdft stats` then reads alone (to commit or share)")
