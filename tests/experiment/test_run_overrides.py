"""`sdft run` settings on the command line: `--config FILE` as the positional form, `section.key=value`
overrides typed like YAML values and refused in one line when unknown, and recorded in the run's config.json
and stage keys. The stages are test doubles: only settings, folders and records matter here."""

import json
from pathlib import Path

import pytest
import yaml

from sdft.base import layout
from sdft.base.errors import ConfigError
from sdft.experiment import pipeline
from sdft.experiment.pipeline import load_run_config, stage_configs


def _config(tmp_path: Path, **extra) -> Path:
    rows = [{"instruction": f"Call the weather tool for city number {i}.", "input": "",
             "output": f'weather.get(city="City{i}")'} for i in range(4)]
    data = tmp_path / "calls.json"
    data.write_text(json.dumps(rows))
    config = {"name": "cli", "out_root": str(tmp_path / "runs"), "data": str(data), "task": "function_call",
              "distill": {"max_new_tokens": 8, "backend": "fake"},
              "train": {"max_steps": 2, "learning_rate": 1e-3},
              "eval": {"tasks": ["openfunctions"], "limit": 2, "data": [f"openfunctions={data}"], "backend": "fake"},
              **extra}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def doubles(monkeypatch):
    """Every stage of the run replaced by a test double (no model, no engine)."""
    monkeypatch.setattr("sdft.evaluate.stage.evaluate", lambda config: {"tasks": {}})
    monkeypatch.setattr("sdft.distill.stage.distill", lambda config: {"examples": 4})
    monkeypatch.setattr(pipeline, "_train", lambda config: {"training": {"steps": config.max_steps}})
    monkeypatch.setattr(pipeline, "compare_with_seed", lambda *a: {"answer_shift": None, "weight_shift": None})
    monkeypatch.setattr("sdft.report.stage.write_report", lambda run_dir: {"md": "r.md", "html": "r.html"})


def test_overrides_are_typed_like_yaml_values_and_win_over_the_file(tmp_path):
    config = load_run_config(_config(tmp_path), [
        "train.learning_rate=1e-4", "eval.limit=20", "arms=[vanilla]", "mix_ratios=[0, 0.5]", "system_prompt=yes",
        "eval.tasks=openfunctions,gsm8k", "train.max_steps=", "distill.limit=2", "distill.sample_seed=3"])
    stages = stage_configs(config)
    assert stages["train"].learning_rate == 1e-4 and isinstance(config.train["learning_rate"], float)
    assert stages["train"].max_steps is None  # an empty value is YAML's null
    assert stages["eval"].limit == 20 and stages["eval"].tasks == ["openfunctions", "gsm8k"]
    assert config.arms == ["vanilla"] and config.mix_ratios == [0.0, 0.5]
    assert config.system_prompt == "yes"  # a text setting keeps the text as typed, not YAML's true
    assert stages["distill"].sample_seed == 3
    # The same values written into the file give the same stage keys: an override is the file's value.
    written = load_run_config(_config(tmp_path, system_prompt="yes",
                                      train={"max_steps": None, "learning_rate": 0.0001}))
    assert pipeline.stage_key(stage_configs(written)["train"]) == pipeline.stage_key(stages["train"])


def test_every_section_of_the_file_takes_overrides(tmp_path):
    config = load_run_config(_config(tmp_path, arms=["vanilla", "sdft-guard", "onpolicy"]), [
        "guard.max_length_ratio=3", "shift.batch_size=4", "onpolicy.teacher=ema", "eval.limit=3"])
    assert config.guard == {"max_length_ratio": 3.0} and config.shift == {"batch_size": 4}
    assert config.onpolicy == {"teacher": "ema"}


@pytest.mark.parametrize("override, message", [
    ("train.learning_rat=1e-4", "override 'train.learning_rat=1e-4': unknown key 'learning_rat' in section "
                                "'train'; valid keys: batch_order, batch_size, "),
    ("trian.epochs=1", "unknown section 'trian'; sections: distill, train, eval, replay, onpolicy, interp, guard, shift"),
    ("shift.what=shift", "unknown key 'what' in section 'shift'"),  # the pipeline sets it
    ("guard.min_length_ratio=short", "'min_length_ratio' must be a number"),
    ("colour=blue", "unknown key 'colour'; top-level keys: arm_seeds, arms, "),
    ("train.max_steps=many", "override 'train.max_steps=many': 'max_steps' must be an integer, got 'many'"),
    ("eval.limit=[1, 2]", "'limit' must be an integer"),
    ("train={epochs: 1}", "'train' is a section; set its keys one by one (train.KEY=VALUE)"),
    ("train.lr_scheduler=steep", "'lr_scheduler' must be one of cosine, linear"),
    ("onpolicy.teacher=oracle", "'teacher' must be one of base, ema, live"),
    ("eval.model=x", "unknown key 'model' in section 'eval'"),  # the pipeline sets it: not a section key
    ("train.epochs=[", "is not valid YAML"),
    ("more.yaml", "'more.yaml' is not an override: write section.key=value"),
])
def test_a_bad_override_is_one_line_naming_the_valid_keys(tmp_path, override, message):
    with pytest.raises(ConfigError, match=None) as caught:
        load_run_config(_config(tmp_path), [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()


def test_config_flag_and_positional_file_are_the_same_run_and_overrides_are_recorded(tmp_path, doubles, capsys):
    from sdft.cli import main

    path = _config(tmp_path, arms=["vanilla"])
    assert main(["run", "--config", str(path), "train.learning_rate=2e-3", "eval.limit=1"]) == 0
    run_dir = tmp_path / "runs" / "cli"
    recorded = json.loads((run_dir / layout.RUN_CONFIG).read_text())
    assert recorded["train"]["learning_rate"] == 0.002 and recorded["eval"]["limit"] == 1
    # config.json is the effective config: run as a file, it names the very same stage folders.
    folders = sorted(p.name for p in (run_dir / "train").iterdir())
    config = load_run_config(run_dir / layout.RUN_CONFIG)
    train = stage_configs(config)["train"]
    assert config.train["learning_rate"] == 0.002 and len(folders) == 1
    # The positional form with the same overrides: nothing new to run.
    capsys.readouterr()
    assert main(["run", str(path), "train.learning_rate=2e-3", "eval.limit=1"]) == 0
    assert sorted(p.name for p in (run_dir / "train").iterdir()) == folders and train.learning_rate == 0.002
    assert main(["run", "train.learning_rate=2e-3"]) == 2
    assert "usage: sdft run CONFIG.yaml [section.key=value ...]" in capsys.readouterr().err


def test_narrowing_the_arms_on_the_command_line_sets_aside_the_left_out_arms_sections(tmp_path, capsys):
    path = _config(tmp_path, arms=["vanilla", "replay", "interp"], interp={"alphas": [0.5]},
                   replay={"data": str(tmp_path / "calls.json"), "ratio": 0.5}, arm_seeds={"replay": [42]})
    full = load_run_config(path)
    narrowed = load_run_config(path, ["arms=[vanilla]"])
    assert narrowed.arms == ["vanilla"] and full.replay and full.interp and full.arm_seeds == {"replay": [42]}
    assert not narrowed.replay and not narrowed.interp and not narrowed.arm_seeds
    err = capsys.readouterr().err
    assert "section 'replay' is not used by arms=['vanilla']: set aside" in err
    assert "arm_seeds.replay is not used by arms=['vanilla']: set aside" in err
    # Seeds given now are judged, not set aside; one arm's seeds take the section form.
    assert load_run_config(path, ["train_seeds=[42,43]", "arm_seeds.replay=[43]"]).arm_seeds == {"replay": [43]}
    with pytest.raises(ConfigError, match=r"names arm 'replay', which is not in 'arms' \(vanilla\)"):
        load_run_config(path, ["arms=[vanilla]", "arm_seeds.replay=[99]"])
    with pytest.raises(ConfigError, match="'arm_seeds.replay' must be"):
        load_run_config(path, ["arm_seeds.replay=many"])


def test_a_file_without_arms_sets_aside_the_seeds_of_its_default_arms(tmp_path, capsys):
    path = _config(tmp_path, arm_seeds={"sdft": [42]})  # arms: the default vanilla and sdft
    assert load_run_config(path).arm_seeds == {"sdft": [42]}
    assert load_run_config(path, ["arms=[vanilla]"]).arm_seeds == {}
    assert "arm_seeds.sdft is not used by arms=['vanilla']: set aside" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"override 'replay.ratio=0.5' sets section 'replay', which no arm"):
        load_run_config(path, ["arms=[vanilla]", "replay.ratio=0.5"])


def test_a_narrowed_run_names_the_same_folders_as_the_full_one(tmp_path, capsys):
    from sdft.cli import main

    path = _config(tmp_path, arms=["vanilla", "sdft", "replay"], replay={"data": str(tmp_path / "calls.json")})
    plans = {}
    for name, extra in (("full", []), ("narrowed", ["arms=[vanilla,sdft]"])):
        assert main(["run", str(path), *extra, "--dry-run"]) == 0
        printed = capsys.readouterr().out
        plans[name] = {word for line in printed.splitlines() for word in line.split()
                       if word.startswith(("eval/", "distill/", "train/"))}
    assert any(folder.startswith("train/vanilla-") for folder in plans["narrowed"])
    assert plans["narrowed"] < plans["full"]  # every folder of the part is a folder of the whole


def test_a_file_whose_own_arms_leave_a_section_unused_is_still_refused(tmp_path):
    path = _config(tmp_path, arms=["vanilla"], interp={"alphas": [0.5]})
    with pytest.raises(ConfigError, match="section 'interp' is set but no arm uses it"):
        load_run_config(path)
    with pytest.raises(ConfigError, match="section 'interp' is set but no arm uses it"):
        load_run_config(path, ["train.learning_rate=1e-4"])
    with pytest.raises(ConfigError, match="section 'interp' is set but no arm uses it"):
        load_run_config(path, ["arms=[vanilla]"])  # narrowing does not excuse the file
