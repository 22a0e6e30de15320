"""The contracts between modules: stage keys from field metadata, configs checked however they are built,
one task interface, declared backend capabilities."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from sdft.config import ColumnMapping, DEFAULT_MODEL, keyed_settings, stage_key
from sdft.distill import DistillConfig
from sdft.errors import ConfigError
from sdft.evaluate import EvalConfig
from sdft.generation import GenerationParams
from sdft.pipeline import RunConfig
from sdft.tasks import TASKS, ExternalTask, GenerativeTask, JudgedTask, LoglikelihoodTask, TaskContext, get_task
from sdft.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_stage_key_leaves_out_fields_marked_unkeyed():
    base = DistillConfig(data="d.json", out="a")
    assert stage_key(base) == stage_key(dataclasses.replace(base, out="b", progress=False))
    assert stage_key(base) != stage_key(dataclasses.replace(base, max_new_tokens=7))
    assert stage_key(base, "upstream-1") != stage_key(base, "upstream-2")
    train = keyed_settings(TrainConfig(data="d", out="o"))
    assert {"out", "resume", "overwrite", "logging_steps", "save_steps"}.isdisjoint(train)
    assert {"learning_rate", "seed", "mix_ratio", "merge"} <= set(train)


@pytest.mark.parametrize("build", [
    lambda: dataclasses.replace(EvalConfig(tasks=["gsm8k"]), top_p=2.0),
    lambda: dataclasses.replace(DistillConfig(data="d"), temperature=-1.0),
    lambda: dataclasses.replace(DistillConfig(data="d"), columns=["instruction"]),
    lambda: dataclasses.replace(TrainConfig(data="d", out="o"), columns=["response=", "x"]),
    lambda: dataclasses.replace(RunConfig(name="n", data="d"), mix_ratios=[2.0]),
    lambda: GenerationParams(max_new_tokens=0),
    lambda: ColumnMapping(("no-equals-sign",)),
], ids=["eval-replace", "distill-replace", "distill-columns", "train-columns", "run-replace", "decoding",
        "columns"])
def test_configs_are_checked_however_they_are_built(build):
    with pytest.raises(ConfigError):
        build()


def test_one_default_model():
    for config in (DistillConfig(data="d"), TrainConfig(data="d", out="o"), EvalConfig(tasks=["gsm8k"]),
                   RunConfig(name="n", data="d")):
        assert config.model == DEFAULT_MODEL


def test_every_task_has_one_kind_base():
    bases = (GenerativeTask, LoglikelihoodTask, ExternalTask)
    for name in TASKS:
        task = get_task(name)
        assert sum(isinstance(task, b) for b in bases) == 1, name
    assert isinstance(get_task("lm_eval:hellaswag"), ExternalTask)


def test_a_judged_task_takes_its_judge_from_the_context():
    class Judge:
        key, batch_size, description = "j", 4, "stub judge"

        def ask(self, prompts):
            return ["Output (a)" for _ in prompts]

    task = get_task("winrate", "unused.json")
    assert isinstance(task, JudgedTask)
    example = {"id": "1", "instruction": "Say hi", "reference": "hello"}
    with pytest.raises(ConfigError, match="judge"):
        task.score_batch([example], ["hi"])
    scored = task.score_batch([example], ["hi"], TaskContext(judge=Judge()))
    assert scored[0][0] == 0.5  # 'a' in both orders: one win, one loss
    entry = task.aggregate([s for s, _ in scored], [{"reason": r} for _, r in scored], TaskContext(judge=Judge()))
    assert entry["judge"] == "stub judge" and list(entry["metrics"]) == ["win_rate", "position_consistency"]


def test_test_doubles_are_not_in_the_production_backend_table():
    code = "from sdft.generation import BACKENDS; print(sorted(BACKENDS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "fake" not in out.stdout and "hf" in out.stdout
