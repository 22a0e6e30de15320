"""Every shipped config (configs/**/*.yaml) is exercised on a clean clone, with its data resolved.

Like litgpt's tests/test_config_hub.py: each config is loaded as a user would run it, and every stage
is driven as far as it goes without a real model or GPU. The data a config names (``../shared/...``
files, hub datasets) is mapped to small fixtures of the same shape in tests/fixtures/shipped/, so a
misspelt field name, an unknown option, a template that does not exist or a data shape the loaders do
not know fails here, not hours into a GPU run. A config naming data without a fixture fails too: add
one of the same shape (same keys) when you ship such a config.
"""

from pathlib import Path

import pytest
import yaml

from sdft.base.errors import SdftError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "shipped"
CONFIGS = sorted(ROOT.glob("configs/**/*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if "accelerate" not in p.parts and "eval" not in p.parts]
ACCELERATE_CONFIGS = [p for p in CONFIGS if "accelerate" in p.parts]
EVAL_CONFIGS = [p for p in CONFIGS if "eval" in p.parts]  # `sdft eval --config` files

# What a shipped config names -> a fixture of the same record shape.
DATA = {
    "../shared/data/sdft-paper/gsm8k_train.json": "gsm8k.json",  # question, answer
    "../shared/data/sdft-paper/gsm8k_test.json": "gsm8k.json",
    "../shared/data/sdft-paper/alpaca_train.json": "alpaca.json",  # instruction, input, output
    "../shared/data/sdft-paper/openfunction_train.json": "openfunction.json",  # instruction, output
    "../shared/data/sdft-paper/openfunction_test.json": "openfunction.json",
    "../shared/data/sdft-paper/alpaca_eval.json": "alpaca_eval.json",  # instruction, output
    "ChilleD/MultiArith:test": "multiarith_hub.json",  # question, final_ans (hub shape)
}


def _resolve(name: str, config: Path) -> str:
    if name in DATA:
        return str(FIXTURES / DATA[name])
    pytest.fail(f"{config.name} names data '{name}' that has no fixture: add one of the same shape to "
                f"{FIXTURES.relative_to(ROOT)} and map it in DATA")


def resolved_config(path: Path, tmp_path: Path):
    """The run config with every data name replaced by its fixture, loaded and validated as `sdft run` does."""
    from sdft.experiment.pipeline import load_run_config

    raw = yaml.safe_load(path.read_text())
    raw["data"] = _resolve(raw["data"], path)
    if (raw.get("replay") or {}).get("data"):  # the replay arms' general dataset
        raw["replay"]["data"] = _resolve(raw["replay"]["data"], path)
    specs = raw.get("eval", {}).get("data", [])
    specs = [specs] if isinstance(specs, str) else specs
    pairs = [part.strip() for spec in specs for part in spec.split(",") if part.strip()]
    raw.setdefault("eval", {})["data"] = [f"{task}={_resolve(name, path)}"
                                          for task, _, name in (p.partition("=") for p in pairs)]
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(raw))
    return load_run_config(copy)


def test_every_config_is_covered():
    assert RUN_CONFIGS and len(CONFIGS) == len(RUN_CONFIGS) + len(ACCELERATE_CONFIGS) + len(EVAL_CONFIGS)
    assert {p.name for p in RUN_CONFIGS} >= {"demo.yaml", "gsm8k.yaml", "openfunctions.yaml", "alpaca.yaml",
                                             "llama3-openfunctions.yaml", "llama3-gsm8k.yaml", "llama3-alpaca.yaml"}


def test_a_broken_field_name_fails(tmp_path):
    bad = tmp_path / "paper" / "broken.yaml"
    bad.parent.mkdir()
    bad.write_text((ROOT / "configs/paper/gsm8k.yaml").read_text().replace("truncation_side:", "truncation_sid:"))
    with pytest.raises(SdftError, match="truncation_sid"):
        resolved_config(bad, tmp_path)
    bad.write_text((ROOT / "configs/paper/gsm8k.yaml").read_text().replace("paper_math_eval", "paper_mat_eval"))
    config = resolved_config(bad, tmp_path)  # options are free text until the task reads them...
    with pytest.raises(SdftError, match="paper_mat_eval"):
        _exercise_eval(config, None)  # ...which this test does for every shipped config


def test_a_shift_task_that_is_not_evaluated_is_refused_at_load(tmp_path):
    raw = yaml.safe_load((ROOT / "configs/paper/gsm8k.yaml").read_text())
    raw["eval"]["tasks"].remove("advbench")  # shift_tasks still names it
    path = tmp_path / "paper" / "no-advbench.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SdftError, match="shift_tasks advbench"):
        resolved_config(path, tmp_path)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))  # refuses unknown keys
    assert config.distributed_type and config.mixed_precision


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_run_config_drives_every_stage(path, tmp_path, tiny_model):
    from transformers import AutoTokenizer

    config = resolved_config(path, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    _exercise_distill(config, tokenizer)
    _exercise_train(config, tokenizer)
    _exercise_eval(config, tokenizer)


@pytest.mark.parametrize("path", EVAL_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_eval_config_drives_its_tasks(path, tiny_model):
    from transformers import AutoTokenizer

    from sdft.base.config import from_dict, load_yaml
    from sdft.evaluate.config import EvalConfig

    evaluation = from_dict(EvalConfig, load_yaml(path), str(path))
    assert evaluation.tasks and not evaluation.data  # each command of its list names its own data
    _exercise_tasks(evaluation, AutoTokenizer.from_pretrained(tiny_model))


def _exercise_distill(config, tokenizer):
    from sdft.base import templates
    from sdft.base.config import column_mapping
    from sdft.base.data import load_examples
    from sdft.distill.filters import make_filter
    from sdft.experiment.pipeline import stage_configs
    from sdft.generation import Completion

    distill = stage_configs(config)["distill"]
    examples = load_examples(distill.data, shape=distill.shape, columns=column_mapping(distill.columns),
                             input_separator=distill.input_separator)
    template = templates.load_template(distill.template or templates.DEFAULT_DISTILL[distill.task], "distill")
    accept = make_filter(distill.filter or distill.task, mode=distill.filter_mode)
    for ex in examples:
        prompt = templates.render(template, ex.instruction, reference=ex.response, tokenizer=tokenizer,
                                  mode=distill.template_mode, history=ex.history or None, system=ex.system,
                                  system_prompt=distill.system_prompt)
        assert ex.instruction in prompt and ex.response in prompt
        # The seed repeating the reference passes every task's check.
        assert accept(ex, Completion(ex.response, 10, 10, "stop"), prompt).accepted


def _exercise_train(config, tokenizer):
    from sdft.base.config import column_mapping
    from sdft.base.data import load_examples
    from sdft.base.templates import DEFAULT_PROMPT, load_template, resolve_mode
    from sdft.experiment.pipeline import stage_configs
    from sdft.train import data as train_data

    train = stage_configs(config)["train"]
    examples = load_examples(config.data, shape=train.shape, columns=column_mapping(train.columns),
                             input_separator=train.input_separator)
    pairs, _ = train_data.choose_targets(examples, None, train.seed)
    template = load_template(train.template or DEFAULT_PROMPT[train.task], "prompt")
    targets, _ = train_data.build_targets(pairs, template, tokenizer, resolve_mode(train.template_mode, tokenizer),
                                          train.system_prompt)
    assert len(targets) == len(examples) and all(t.response.strip() for t in targets)


def _exercise_eval(config, tokenizer):
    """Build every task with its options, load its data (as `sdft eval` does: a task whose default data
    is not installed is skipped, a named file must load), render prompts and score an answer."""
    from sdft.experiment.pipeline import stage_configs

    _exercise_tasks(stage_configs(config)["eval"], tokenizer)


def _exercise_tasks(evaluation, tokenizer):
    from sdft.tasks import ExternalTask, JudgedTask, LoglikelihoodTask, get_task

    data, options = evaluation.data_paths(), evaluation.task_options()
    for name in evaluation.tasks:
        opts = {"template_mode": evaluation.template_mode, "system_prompt": evaluation.system_prompt,
                **options.get(name, {})}
        task = get_task(name, data.get(name), **opts)
        if isinstance(task, ExternalTask):
            task.build_arguments("/models/seed", None, evaluation)
            continue
        try:
            examples = task.examples()[:2]
        except SdftError:
            if name in data:
                raise
            continue
        if tokenizer is None:
            continue
        for ex in examples:
            if isinstance(task, LoglikelihoodTask):
                context, options_ = task.choices(ex)
                assert options_
            else:
                assert task.prompt(ex, tokenizer)
                if not isinstance(task, JudgedTask) and name != "humaneval":  # those grade in batches
                    assert task.score(ex, str(ex.get("reference", ""))) in (0.0, 0.5, 1.0)
