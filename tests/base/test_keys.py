"""The table of settings left out of keys at their old defaults (sdft.base.keys)."""

import dataclasses

from sdft.base.config import IF_SET
from sdft.base.keys import OMISSIONS, without_old_defaults
from sdft.compare.config import AnalyzeConfig, ShiftConfig
from sdft.distill.config import DistillConfig
from sdft.evaluate.config import EvalConfig
from sdft.experiment.config import RunConfig
from sdft.generation import GenerationParams
from sdft.train.config import TrainConfig

CONFIGS = (DistillConfig, TrainConfig, EvalConfig, AnalyzeConfig, ShiftConfig, RunConfig)


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def test_every_if_set_field_is_in_the_table_with_its_default():
    declared = {(f"config:{c.__name__}", f.name, repr(_default(f))) for c in CONFIGS for f in dataclasses.fields(c)
                if f.metadata.get("keyed") == IF_SET}
    listed = {(r.scope, r.setting, repr(r.value)) for r in OMISSIONS if r.scope.startswith("config:")}
    assert declared == listed and declared


def test_each_row_names_when_its_setting_was_added():
    assert all(r.since.rsplit(", ", 1)[1].startswith("2026-") and r.since.rsplit(", ", 1)[0] for r in OMISSIONS)


def test_a_setting_is_left_out_only_at_its_old_value_and_only_in_its_scope():
    assert "truncation_side" not in GenerationParams().record()
    assert GenerationParams(truncation_side="right").record()["truncation_side"] == "right"
    assert without_old_defaults("answer cache", {"precision": "fp32", "x": 1}) == {"x": 1}
    assert without_old_defaults("answer cache", {"precision": "bf16"}) == {"precision": "bf16"}
    assert without_old_defaults("decoding", {"precision": "fp32"}) == {"precision": "fp32"}
    assert without_old_defaults("eval stage", {"task_revisions": {}}) == {}
    assert without_old_defaults("eval stage", {"task_revisions": {"mmlu": 1}}) == {"task_revisions": {"mmlu": 1}}
