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
