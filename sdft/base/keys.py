"""Settings that stage keys and run records leave out while they hold the value runs had before the setting
existed: one table, so that adding a setting never renames users' folders or invalidates their caches.

Each row says where the rule applies, the setting, the value it is left out at, and the commit that added the
setting (runs made before it have no such setting, and the value is what they did). ``keyed=IF_SET`` fields of
the stage configs (``sdft.base.config.field``) follow the same rule inside ``keyed_settings``; they are
listed here too (``scope="config:..."``), and ``tests/base/test_keys.py`` checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_ABSENT = object()


@dataclass(frozen=True)
class Omission:
    scope: str       # which record or key the rule applies to
    setting: str
    value: Any       # left out while the setting holds this value
    since: str       # commit, date: when the setting was added

    def applies(self, settings: dict) -> bool:
        return settings.get(self.setting, _ABSENT) == self.value


OMISSIONS = (
    Omission("decoding", "truncation_side", "left", "3ab1e4f, 2026-12-01"),
    Omission("decoding", "logit_bias", (), "decoding probes, 2026-12-06"),
    Omission("answer cache", "precision", "fp32", "1870048, 2026-12-01"),
    Omission("run config", "train_seeds", None, "2a15804, 2026-12-01"),
    Omission("run config", "guard", {}, "sdft-guard arm, 2026-12-06"),
    Omission("run config", "arm_seeds", {}, "per-arm training seeds, 2026-12-07"),
    Omission("run config", "shift", {}, "the engine scorer of seed answers, 2026-12-06"),
    Omission("eval stage", "task_revisions", {}, "5a5e71d, 2026-12-02"),
    Omission("replay cache", "system_prompt", "template", "5e9de66, 2026-12-01"),
    Omission("replay cache", "engine", {"backend": "hf", "precision": "fp32"}, "the layout change, 2026-12-06"),
    Omission("config:DistillConfig", "sample_seed", None, "acbf86e, 2026-12-02"),
    Omission("config:DistillConfig", "format_guard", False, "format-aware distillation, 2026-12-06"),
    Omission("config:DistillConfig", "guard_min_length_ratio", 0.5, "format-aware distillation, 2026-12-06"),
    Omission("config:DistillConfig", "guard_max_length_ratio", 2.0, "format-aware distillation, 2026-12-06"),
    Omission("config:DistillConfig", "self_answer", False, "format-aware distillation, 2026-12-06"),
    Omission("config:DistillConfig", "answer_template", None, "format-aware distillation, 2026-12-06"),
    Omission("config:TrainConfig", "batch_order", "length", "common batch order, 2026-12-06"),
    Omission("config:TrainConfig", "prose_targets", False, "the sdft-prose arm, 2026-12-06"),
    Omission("config:TrainConfig", "padding_free", False, "b87185f, padding-free training, 2026-12-07"),
    Omission("config:EvalConfig", "answer_prefix", None, "decoding probes, 2026-12-06"),
    Omission("config:EvalConfig", "forbid_opening", None, "decoding probes, 2026-12-06"),
    # For single-turn data (all runs before) every turn is the last one. Folders made from multi-turn data before
    # these settings learned and rewrote the last turn only, and are reused as done (docs/training.md says so).
    Omission("config:TrainConfig", "loss_on", "all_turns", "multi-turn data, 2026-12-06"),
    Omission("config:DistillConfig", "rewrite_turns", "all_turns", "multi-turn data, 2026-12-06"),
    Omission("config:TrainConfig", "replay_backend", "hf", "the layout change, 2026-12-06"),
    Omission("config:TrainConfig", "replay_precision", "auto", "the layout change, 2026-12-06"),
)

# Rules that depend on a run folder rather than on a value (kept here so that every history rule is in one
# place; the code that applies them names the rule):
# - "distillation data contents", cef493e, 2026-12-01: a distillation folder made before the training file's
#   contents were keyed keeps its key when its run.json records the same file hash
#   (sdft.experiment.pipeline's distillation key).
# - "manifest seed", 2a15804, 2026-12-01: a run of one training seed records no seed in its labels and manifest.


def without_old_defaults(scope: str, settings: dict) -> dict:
    """``settings`` less the entries that :data:`OMISSIONS` leaves out in ``scope``."""
    rules = [r for r in OMISSIONS if r.scope == scope]
    return {k: v for k, v in settings.items() if not any(r.setting == k and r.applies(settings) for r in rules)}
