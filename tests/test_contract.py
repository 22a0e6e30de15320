"""The contracts between modules: stage keys from field metadata, configs checked however they are built,
one task interface, declared backend capabilities."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from sdft.base.config import DEFAULT_MODEL, ColumnMapping, keyed_settings, stage_key
from sdft.base.errors import ConfigError
from sdft.distill.config import DistillConfig
from sdft.evaluate.config import EvalConfig
from sdft.experiment.config import RunConfig
from sdft.generation import GenerationParams
from sdft.tasks import TASKS, ExternalTask, GenerativeTask, JudgedTask, LoglikelihoodTask, TaskContext, get_task
from sdft.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_stage_key_leaves_out_fields_marked_unkeyed():
    base = DistillConfig(data="d.json", out="a")
    assert stage_key(base) == stage_key(dataclasses.replace(base, out="b", progress=False))
    assert stage_key(base) != stage_key(dataclasses.replace(base, max_new_tokens=7))
    assert stage_key(base, "upstream-1") != stage_key(base, "upstream-2")
    train = keyed_settings(TrainConfig(data="d", out="o"))
    assert {"out", "resume", "overwrite", "logging_steps", "save_steps"}.isdisjoint(train)
    assert {"learning_rate", "seed", "mix_ratio", "merge"} <= set(train)


def test_if_set_settings_are_keyed_only_away_from_their_default():
    from sdft.base.config import IF_SET, field

    @dataclasses.dataclass
    class Settings:
        kept: int = field(1, "always keyed")
        later: int | None = field(None, "added later", keyed=IF_SET)
        names: list = field(default_factory=list, help="added later too", keyed=IF_SET)

    assert keyed_settings(Settings()) == {"kept": 1}
    assert keyed_settings(Settings(later=0, names=["a"])) == {"kept": 1, "later": 0, "names": ["a"]}
    with pytest.raises(ValueError, match="IF_SET"):
        field(None, "a typo must not un-key a setting", keyed="if_set")


def test_a_revised_task_keys_the_evaluation_stages_that_run_it():
    from sdft.evaluate.run import task_settings
    from sdft.experiment.pipeline import eval_stage_key

    plain = EvalConfig(tasks=["gsm8k", "arc"])
    assert eval_stage_key(plain, "up") == stage_key(plain, "up")  # earlier runs keep their folders
    with_mmlu = EvalConfig(tasks=["gsm8k", "mmlu"], limit=200)
    assert get_task("mmlu").revision >= 1 and eval_stage_key(with_mmlu, "up") != stage_key(with_mmlu, "up")
    # MMLU's revision changed only which questions a limit takes: a run over all of them keeps its stages.
    every = dataclasses.replace(with_mmlu, limit=None)
    assert eval_stage_key(every, "up") == stage_key(every, "up")
    # Items are cached by id: the revision is recorded with the answers but leaves the cache key alone.
    revised, unrevised = get_task("mmlu"), get_task("mmlu")
    unrevised.revision = 0
    settings = task_settings("mmlu", revised, with_mmlu)
    assert settings["revision"] >= 1 and settings["settings_key"] == task_settings("mmlu", unrevised,
                                                                                 with_mmlu)["settings_key"]
    # A revision of the scoring, though, renames the cache: cached scores are not scored again.
    revised.revision_scope = "scoring"
    assert task_settings("mmlu", revised, with_mmlu)["settings_key"] != settings["settings_key"]


def _pinned_configs():
    """One DistillConfig and one EvalConfig of each kind a user has (defaults; a preset from YAML-style keys
    with the engine settings given), the way ``sdft run`` and ``--config`` build them."""
    from sdft.base.config import from_dict
    from sdft.distill.config import PRESETS as DISTILL_PRESETS
    from sdft.evaluate.config import PRESETS as EVAL_PRESETS

    engine = {"backend": "hf", "precision": "fp32", "endpoint": [], "backend_option": ["device=cpu"]}  # not keyed
    remote = {"backend": "openai", "precision": "bf16", "endpoint": ["http://127.0.0.1:8000/v1"],
              "backend_option": ["retries=1"]}
    return {
        "distill-default": DistillConfig(data="d.jsonl"),
        "distill-paper": from_dict(DistillConfig, {**DISTILL_PRESETS["paper"], "data": "alpaca.json",
                                                   "columns": ["instruction=q"], **engine}),
        "eval-default": EvalConfig(tasks=["gsm8k"]),
        "eval-paper": from_dict(EvalConfig, {**EVAL_PRESETS["paper"], "tasks": ["gsm8k", "arc"], "limit": 5,
                                             **remote}),
    }


# Computed before the engine settings became one shared definition (sdft.generation.EngineSettings): a stage
# key names run folders and caches, so a refactoring that changes one makes users' runs start over.
PINNED_KEYS = {
    "distill-default": ("3fc2e088c3119109", "42d4c7cfdce8d0b7"),
    "distill-paper": ("0c2d745388af9e05", "9d9ed31400137341"),
    "eval-default": ("b5a5da7fb0d72d32", "8844d12dffccc2ed"),
    "eval-paper": ("46f10659e90aaa36", "649c9c602176ebcd"),
}


@pytest.mark.parametrize("name", sorted(PINNED_KEYS))
def test_stage_keys_of_existing_configs_never_change(name):
    config = _pinned_configs()[name]
    assert (stage_key(config), stage_key(config, "upstream")) == PINNED_KEYS[name]
    assert {"backend", "precision"} <= set(keyed_settings(config))
    assert {"endpoint", "backend_option", "out", "progress"}.isdisjoint(keyed_settings(config))


@pytest.mark.parametrize("command", ["distill", "eval"])
def test_engine_flags_keep_their_names(command):
    from sdft.base.config import resolve
    from sdft.cli import build_parser

    cls = {"distill": DistillConfig, "eval": EvalConfig}[command]
    parser = build_parser(command)
    args = parser.parse_args([
        command, "--data" if command == "distill" else "--tasks", "d.jsonl" if command == "distill" else "gsm8k",
        "--backend", "openai", "--precision", "bf16", "--endpoint", "http://127.0.0.1:8000/v1",
        "--endpoint", "http://127.0.0.1:8001/v1", "--backend-option", "retries=1,max_concurrency=2"])
    config = resolve(cls, args)
    assert (config.backend, config.precision) == ("openai", "bf16")
    assert config.endpoint == ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"]
    assert config.backend_option == ["retries=1", "max_concurrency=2"]
    sub = parser._subparsers._group_actions[0].choices[command]  # flags listed under their own heading
    engine = next(g for g in sub._action_groups if g.title == "generation engine")
    assert [a.dest for a in engine._group_actions] == ["backend", "precision", "endpoint", "backend_option"]


# The settings several stages share, each declared once (a mixin with its own --help heading): which
# commands list them under that heading, in what order.
SHARED_SECTIONS = {
    "distill": {"generation engine": ["backend", "precision", "endpoint", "backend_option"],
                "decoding": ["max_new_tokens", "max_prompt_tokens", "truncation_side", "batch_size", "temperature",
                             "top_p", "top_k", "seed"],
                "system prompt": ["system_prompt"]},
    "train": {"system prompt": ["system_prompt"], "LoRA": ["lora_r", "lora_alpha", "lora_dropout", "lora_targets"],
              "replay": ["replay_data", "replay_ratio", "replay_source", "replay_max_new_tokens", "replay_backend",
                         "replay_precision"]},
}
SHARED_SECTIONS["eval"] = {name: SHARED_SECTIONS["distill"][name] for name in SHARED_SECTIONS["distill"]}


@pytest.mark.parametrize("command", sorted(SHARED_SECTIONS))
def test_shared_settings_are_listed_under_their_own_heading(command):
    from sdft.cli import build_parser

    sub = build_parser(command)._subparsers._group_actions[0].choices[command]
    sections = [(g.title, [a.dest for a in g._group_actions]) for g in sub._action_groups
                if g.title not in ("positional arguments", "options") and g._group_actions]
    assert sections == list(SHARED_SECTIONS[command].items())


@pytest.mark.parametrize(("cls", "bad", "message"), [
    (DistillConfig, {"system_prompt": " "}, "'system_prompt' must be"),
    (EvalConfig, {"system_prompt": ""}, "'system_prompt' must be"),
    (TrainConfig, {"system_prompt": "\n"}, "'system_prompt' must be"),
    (DistillConfig, {"top_k": -1}, "top_k >= 0"),
    (EvalConfig, {"max_prompt_tokens": 0}, "'max_prompt_tokens' must be at least 1"),
    (TrainConfig, {"lora_r": 0}, "'lora_r' must be at least 1, got 0"),
    (TrainConfig, {"lora_alpha": 0}, "'lora_alpha' must be positive, got 0"),
    (TrainConfig, {"lora_targets": ["all-linear", "q_proj"]}, "all-linear already means every linear layer"),
    (TrainConfig, {"lora_dropout": 1.5}, "'lora_dropout' must be between 0 and 1, got 1.5"),
    (TrainConfig, {"lora_targets": []}, "'lora_targets' needs at least one module"),
    (TrainConfig, {"weight_decay": -0.1}, "'weight_decay' must be >= 0, got -0.1"),
    (TrainConfig, {"replay_source": "seed"}, "need --replay-data"),
    (TrainConfig, {"replay_data": "g.jsonl"}, "'replay_ratio' must be above 0"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_a_shared_groups_checks_run_in_every_config_that_takes_it(cls, bad, message):
    from sdft.base.config import from_dict

    base = {DistillConfig: {"data": "d"}, EvalConfig: {"tasks": ["gsm8k"]}, TrainConfig: {"data": "d", "out": "o"}}
    with pytest.raises(ConfigError, match=message):
        from_dict(cls, {**base[cls], **bad})


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
