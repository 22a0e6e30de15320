"""Pins of what users type and what names their folders, per stage config: every command's flags (option
strings, help text, defaults, choices), every config's keys (type, default, help, key rule) and the stage
keys of the settings that several stages share (decoding, system prompt, replay, LoRA).

The flags and keys are compared with ``tests/fixtures/settings_surface.json``, written once from the code
before the shared settings were declared once (``sdft.generation.DecodingSettings`` and the other groups).
A difference there is a change users see: make it on purpose, never by regenerating the file to pass. The
order of flags in ``--help`` is not pinned here: a shared group lists its flags under its own heading."""

import argparse
import dataclasses
import json
import typing
from pathlib import Path

import pytest

from sdft.base.config import from_dict, stage_key
from sdft.cli import COMMANDS, _load, build_parser
from sdft.distill.config import DistillConfig
from sdft.evaluate.config import EvalConfig
from sdft.experiment.config import RunConfig
from sdft.train.config import TrainConfig

SURFACE = Path(__file__).parent / "fixtures" / "settings_surface.json"


def _plain(value):
    """A default as JSON can hold it (a tuple as a list, a path or a type as its text)."""
    return json.loads(json.dumps(value, default=str))


def flags(command: str) -> dict:
    """``{first option string or positional name: its argparse settings}`` of ``sdft COMMAND``."""
    sub = build_parser(command)._subparsers._group_actions[0].choices[command]
    out = {}
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        out[name] = {"option_strings": list(action.option_strings), "dest": action.dest, "help": action.help,
                     "default": _plain(action.default), "choices": _plain(action.choices), "nargs": action.nargs,
                     "metavar": action.metavar, "action": type(action).__name__}
    return out


def config_keys(cls) -> dict:
    """``{key: its type, default, help and key rule}`` of a config class (what YAML files and sections take)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = {"type": str(hints[f.name]), "default": None if default is dataclasses.MISSING else
                       _plain(default), "required": default is dataclasses.MISSING,
                       "metadata": _plain(dict(f.metadata))}
    return out


def surface() -> dict:
    return {"flags": {name: flags(name) for name in COMMANDS},
            "configs": {name: config_keys(_load(name)[1]) for name in COMMANDS} | {"RunConfig": config_keys(RunConfig)}}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_flags_of_every_command_never_change(command):
    assert flags(command) == json.loads(SURFACE.read_text())["flags"][command]


@pytest.mark.parametrize("name", sorted([*COMMANDS, "RunConfig"]))
def test_the_keys_of_every_config_never_change(name):
    cls = RunConfig if name == "RunConfig" else _load(name)[1]
    assert config_keys(cls) == json.loads(SURFACE.read_text())["configs"][name]


def _base(cls):
    return {DistillConfig: {"data": "d.jsonl"}, EvalConfig: {"tasks": ["gsm8k"]},
            TrainConfig: {"data": "d.jsonl", "out": "o"}}[cls]


# Each shared setting away from its default (and every config at its defaults, under ""), with the stage key
# it had before the shared settings were declared once: a key names a run folder and its caches.
SHARED = {
    "": {},
    "max_new_tokens": {"max_new_tokens": 64},
    "max_prompt_tokens": {"max_prompt_tokens": 512},
    "truncation_side": {"truncation_side": "right"},
    "batch_size": {"batch_size": 4},
    "temperature": {"temperature": 0.7},
    "top_p": {"top_p": 0.9},
    "top_k": {"top_k": 20},
    "seed": {"seed": 7},
    "system_prompt": {"system_prompt": "template"},
    "system_prompt-own": {"system_prompt": "You answer briefly."},
    "lora_r": {"lora_r": 16},
    "lora_alpha": {"lora_alpha": 32},
    "lora_dropout": {"lora_dropout": 0.05},
    "lora_targets": {"lora_targets": ["all-linear"]},
    "replay_data": {"replay_data": "general.jsonl", "replay_ratio": 0.25},
    "replay_source": {"replay_data": "general.jsonl", "replay_ratio": 0.25, "replay_source": "seed"},
    "replay_max_new_tokens": {"replay_data": "general.jsonl", "replay_ratio": 0.25, "replay_max_new_tokens": 128},
    "replay_backend": {"replay_data": "general.jsonl", "replay_ratio": 0.25, "replay_backend": "vllm"},
    "replay_precision": {"replay_data": "general.jsonl", "replay_ratio": 0.25, "replay_precision": "bf16"},
}
SHARED_BY = {DistillConfig: ["", "max_new_tokens", "max_prompt_tokens", "truncation_side", "batch_size",
                             "temperature", "top_p", "top_k", "seed", "system_prompt", "system_prompt-own"],
             EvalConfig: ["", "max_new_tokens", "max_prompt_tokens", "truncation_side", "batch_size", "temperature",
                          "top_p", "top_k", "seed", "system_prompt", "system_prompt-own"],
             TrainConfig: ["", "batch_size", "seed", "system_prompt", "system_prompt-own", "lora_r", "lora_alpha",
                           "lora_dropout", "lora_targets", "replay_data", "replay_source", "replay_max_new_tokens",
                           "replay_backend", "replay_precision"]}
PINNED_SHARED_KEYS = {
    'DistillConfig:': '3fc2e088c3119109',
    'DistillConfig:max_new_tokens': '8d1373ef841073eb',
    'DistillConfig:max_prompt_tokens': '5456964933efb658',
    'DistillConfig:truncation_side': '385734dafda13d64',
    'DistillConfig:batch_size': '1a5033848744a426',
    'DistillConfig:temperature': '6f7eebca9ccc156f',
    'DistillConfig:top_p': '70358b5a560b5fbb',
    'DistillConfig:top_k': '5c76e6d715bdf4c8',
    'DistillConfig:seed': 'd136ebd1b2998a71',
    'DistillConfig:system_prompt': 'c5ea836648278fee',
    'DistillConfig:system_prompt-own': '9a8a753bd08ebb17',
    'EvalConfig:': 'b5a5da7fb0d72d32',
    'EvalConfig:max_new_tokens': '3774be88df02aa7e',
    'EvalConfig:max_prompt_tokens': 'e8728527981a33a2',
    'EvalConfig:truncation_side': '76e3772c3a45b443',
    'EvalConfig:batch_size': '02652ed05b69e230',
    'EvalConfig:temperature': 'c69e87b54e297fff',
    'EvalConfig:top_p': '7b0955f49756a29f',
    'EvalConfig:top_k': 'a33af4f2b297aaba',
    'EvalConfig:seed': '69b1db4f4eb99c12',
    'EvalConfig:system_prompt': 'a84e0805eb27dc66',
    'EvalConfig:system_prompt-own': 'b5f9cbb6bf10ca50',
    'TrainConfig:': '8b1b2c556c8901df',
    'TrainConfig:batch_size': '92328cd616c14bba',
    'TrainConfig:seed': '29c108cb46b8fcf0',
    'TrainConfig:system_prompt': '8117dcea170c251f',
    'TrainConfig:system_prompt-own': '3d17bad2a8036a5e',
    'TrainConfig:lora_r': 'ef81ef3229a03084',
    'TrainConfig:lora_alpha': 'b0aba461eaf5119c',
    'TrainConfig:lora_dropout': 'a576544b2a998b11',
    'TrainConfig:lora_targets': 'e68e7532a9080ed2',
    'TrainConfig:replay_data': '899ed4c03e20153a',
    'TrainConfig:replay_source': 'da578e53338ecea4',
    'TrainConfig:replay_max_new_tokens': 'b40fe6ce3fe7da20',
    'TrainConfig:replay_backend': 'd6a6e5f432c4afbe',
    'TrainConfig:replay_precision': '666adce53a4ce002',
}


def shared_keys() -> dict:
    return {f"{cls.__name__}:{name}": stage_key(from_dict(cls, {**_base(cls), **SHARED[name]}))
            for cls, names in SHARED_BY.items() for name in names}


def test_the_stage_keys_of_shared_settings_never_change():
    assert shared_keys() == PINNED_SHARED_KEYS


def test_a_run_gives_its_system_prompt_to_every_stage_with_the_same_keys():
    from sdft.experiment.pipeline import stage_configs

    def keys(**settings):
        # A hub name, not a file: a local path would put the checkout's location into the distill key.
        config = RunConfig(name="n", data="sdft-tests/alpaca-shaped", eval={"tasks": ["gsm8k"]}, **settings)
        return {name: stage_key(stage) for name, stage in stage_configs(config).items()}

    assert keys() == PINNED_RUN_KEYS["default"]
    assert keys(system_prompt="template") == PINNED_RUN_KEYS["template"]


PINNED_RUN_KEYS = {
    'default': {'distill': 'bea77f6266da4262', 'train': '7006dc50c18c9890', 'eval': 'b5a5da7fb0d72d32'},
    'template': {'distill': 'b3f9b3160d95696e', 'train': 'bf55e8be383f1f49', 'eval': 'a84e0805eb27dc66'},
}
