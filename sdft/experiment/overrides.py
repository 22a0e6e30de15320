"""Settings given after ``sdft run``'s config file: ``section.key=value`` or a top-level ``key=value``.

``sdft run configs/demo.yaml train.learning_rate=1e-4 eval.limit=20 arms=[vanilla]`` runs the file with those
values put in, as if the file had said them. A value is read as a YAML value (``1e-4``, ``true``, ``null``,
``[vanilla, sdft]``, ``gsm8k,arc`` for a list) and checked against the key's type at once, so a typo in a key
or a value is one line naming the override (and, for a key, the valid ones) before any work. Text settings
take the text as typed (``system_prompt=yes`` is the text "yes", not true). The merged settings are the run's
config: its stage keys and the ``config.json`` it writes.
"""

from __future__ import annotations

import copy
import dataclasses
import typing

from sdft.base.config import _unwrap_optional, coerce
from sdft.base.errors import ConfigError
from sdft.base.userfiles import loads_yaml
from sdft.compare.config import AnalyzeConfig
from sdft.distill.config import DistillConfig
from sdft.evaluate.config import EvalConfig
from sdft.experiment.arms import GuardSection, InterpSection, OnpolicySection, ReplaySection
from sdft.experiment.config import _OWNED, RunConfig
from sdft.train.config import TrainConfig


def _section_types(section: str) -> dict[str, typing.Any]:
    """The keys a section of the run config takes, with their types (a stage config's fields, less the ones
    the pipeline sets itself, which ``RunConfig.validate`` names when a file sets them)."""
    cls = {"distill": DistillConfig, "train": TrainConfig, "eval": EvalConfig, "replay": ReplaySection,
           "onpolicy": OnpolicySection, "interp": InterpSection, "guard": GuardSection, "shift": AnalyzeConfig}[section]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in _OWNED.get(section, ())]
    if section == "train":  # those belong to the arms (their own sections)
        names = [n for n in names if n != "objective" and not n.startswith(("replay_", "onpolicy_"))]
    return {n: hints[n] for n in names}


SECTIONS = ("distill", "train", "eval", "replay", "onpolicy", "interp", "guard", "shift")


def apply(data: dict, items: list[str]) -> dict:
    """``data`` (a run config file's mapping) with each ``items`` override put in, later ones winning."""
    merged = copy.deepcopy(data)
    for item in items:
        path, value = _parse(item)
        if len(path) == 1:
            merged[path[0]] = value
        else:
            section = merged.get(path[0])
            merged[path[0]] = {**(section if isinstance(section, dict) else {}), path[1]: value}
    return merged


def _parse(item: str) -> tuple[tuple[str, ...], typing.Any]:
    source = f"override '{item}'"
    name, sep, text = item.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"'{item}' is not an override: write section.key=value or key=value "
                          "(the config file is named once, first or with --config)")
    path = tuple(part.strip() for part in name.split("."))
    top = {f.name for f in dataclasses.fields(RunConfig)}
    if len(path) == 1:
        if path[0] not in top:
            raise ConfigError(f"{source}: unknown key '{path[0]}'; top-level keys: {', '.join(sorted(top))}")
        if path[0] in SECTIONS:
            raise ConfigError(f"{source}: '{path[0]}' is a section; set its keys one by one ({path[0]}.KEY=VALUE)")
        return path, _value(text, typing.get_type_hints(RunConfig)[path[0]], path[0], source)
    if path[0] == "arm_seeds" and len(path) == 2:  # one arm's seeds (check_arm_seeds judges the arm)
        return path, _value(text, list[int], f"arm_seeds.{path[1]}", source)
    if path[0] not in SECTIONS:
        raise ConfigError(f"{source}: unknown section '{path[0]}'; sections: {', '.join(SECTIONS)} "
                          "(top-level keys take no section: key=value)")
    types = _section_types(path[0])
    if len(path) > 2 or path[1] not in types:
        raise ConfigError(f"{source}: unknown key '{'.'.join(path[1:])}' in section '{path[0]}'; "
                          f"valid keys: {', '.join(sorted(types))}")
    return path, _value(text, types[path[1]], path[1], source)


def _value(text: str, tp, name: str, source: str):
    """``text`` read as YAML and checked against ``tp`` as a value in the file would be."""
    value = loads_yaml(text, source)
    inner, optional = _unwrap_optional(tp)
    if inner is str and not isinstance(value, str) and not (value is None and optional):
        value = text.strip()  # a text setting keeps what was typed: "yes", "1.0", "a: b"
    return coerce(value, tp, name, source)
