"""Dataclass configs: validation, YAML < preset < flags precedence, and CLI error output."""

import argparse
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest

from sdft.base.config import IF_SET, add_arguments, field, from_dict, keyed_settings, override, resolve
from sdft.base.errors import ConfigError


@dataclass
class Example:
    data: str = field(None, "input")
    steps: int = field(3, "steps")
    rate: float = field(0.1, "rate")
    greedy: bool = field(True, "greedy")
    tasks: list[str] = field(default_factory=list, help="tasks")
    limit: int | None = field(None, "limit")


def test_unknown_keys_and_bad_types_are_refused():
    with pytest.raises(ConfigError, match="unknown key.*stepz.*known keys"):
        from_dict(Example, {"stepz": 2})
    with pytest.raises(ConfigError, match="'steps' must be an integer"):
        from_dict(Example, {"steps": "many"})
    with pytest.raises(ConfigError, match="'steps' must be an integer"):
        from_dict(Example, {"steps": 2.5})
    with pytest.raises(ConfigError, match="'greedy' must be true or false"):
        from_dict(Example, {"greedy": "maybe"})
    with pytest.raises(ConfigError, match="'tasks' must be a list"):
        from_dict(Example, {"tasks": 3})


def test_values_are_converted():
    cfg = from_dict(Example, {"steps": "4", "rate": 1, "greedy": "false", "tasks": ["a,b", "c"], "limit": None})
    assert (cfg.steps, cfg.rate, cfg.greedy, cfg.tasks, cfg.limit) == (4, 1.0, False, ["a", "b", "c"], None)


def test_flags_override_yaml_which_overrides_presets(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("steps: 7\nrate: 0.5\n")
    args = parser.parse_args(["--rate", "0.9", "--tasks", "x", "--tasks", "y,z", "--no-greedy"])
    cfg = resolve(Example, args, str(yaml_file), presets={"p": {"steps": 1, "limit": 5}}, preset="p")
    assert (cfg.steps, cfg.rate, cfg.limit, cfg.tasks, cfg.greedy) == (7, 0.9, 5, ["x", "y", "z"], False)


def test_bad_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nrate: [1,\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+"):
        resolve(Example, parser.parse_args([]), str(bad))
    with pytest.raises(ConfigError, match="not found"):
        resolve(Example, parser.parse_args([]), str(tmp_path / "none.yaml"))
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve(Example, parser.parse_args([]), presets={"p": {}}, preset="q")


@dataclass
class Sampling:
    section: ClassVar[str] = "sampling"
    budget: int = field(64, "tokens per answer", keyed=IF_SET)
    heat: float = field(0.0, "temperature")


@dataclass
class Scoring:
    section: ClassVar[str] = "scoring"
    judge: str | None = field(None, "judge model")


@dataclass
class Stage(Sampling, Scoring):
    name: str = field("x", "the stage's own setting")
    budget: int = override(Sampling, "budget", 512, "tokens per rewrite")


def _sections(cls) -> list[tuple[str, list[str]]]:
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return [(g.title, [a.dest for a in g._group_actions]) for g in parser._action_groups if g._group_actions]


def test_a_shared_group_is_listed_under_its_heading_in_the_order_the_class_names_it():
    assert _sections(Stage) == [("options", ["help", "name"]), ("sampling", ["budget", "heat"]),
                                ("scoring", ["judge"])]


def test_override_changes_the_default_or_help_and_keeps_the_groups_key_rule():
    fields = {f.name: f for f in dataclasses.fields(Stage)}
    assert (fields["budget"].default, fields["budget"].metadata["help"]) == (512, "tokens per rewrite")
    assert fields["budget"].metadata["keyed"] == IF_SET  # the group's: keyed only away from the stage's default
    assert keyed_settings(Stage()) == {"heat": 0.0, "judge": None, "name": "x"}
    assert keyed_settings(Stage(budget=64))["budget"] == 64
    assert [f.name for f in dataclasses.fields(Stage)] == ["judge", "budget", "heat", "name"]  # in place
    same = override(Sampling, "heat")  # neither given: the group's own declaration
    assert (same.default, same.metadata) == (0.0, {"help": "temperature", "keyed": True})
