"""Dataclass configs: YAML files give defaults, command-line flags override, unknown keys are refused.

A stage's config is a dataclass whose fields carry their help text in ``metadata["help"]``. The same
dataclass drives validation (``from_dict``) and the command-line parser (``add_arguments``), so a flag and
its YAML key can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from sdft.base import userfiles
from sdft.base.errors import ConfigError

T = TypeVar("T")

DEFAULT_MODEL = "smollm2-135m-instruct"  # the embedded seed model (see sdft.models.aliases.ALIASES)
TaskKind = Literal["general", "math", "function_call", "code"]  # picks templates and the distillation filter


IF_SET = "if-set"  # see field(keyed=...)


def field(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
          positional: bool = False, default_factory: Any = dataclasses.MISSING,
          keyed: bool | str = True, metavar: str | None = None) -> Any:
    """A dataclass field with help text for the CLI (optionally a custom flag name, or positional).

    ``keyed=False`` marks a setting that cannot change a stage's result (where output goes, progress
    display, logging and checkpoint cadence): it stays out of :func:`stage_key`, so changing it neither
    renames a stage folder nor stops a resume. ``keyed=IF_SET`` keys a setting only when it differs from
    its default: a setting added later leaves the keys (and the cached stages) of earlier runs as they were."""
    if keyed not in (True, False, IF_SET):
        raise ValueError(f"keyed must be True, False or IF_SET, not {keyed!r}")
    meta: dict[str, Any] = {"help": help, "keyed": keyed}
    if flag:
        meta["flag"] = flag
    if positional:
        meta["positional"] = True
    if metavar:
        meta["metavar"] = metavar
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def override(group: type, name: str, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:
    """The setting ``name`` of a settings group (a mixin such as ``sdft.generation.DecodingSettings``) with
    another default or help text, for a config whose stage needs them: ``max_prompt_tokens: int =
    override(DecodingSettings, "max_prompt_tokens", 2048)`` in the config's class body. The key rule and flag
    stay the group's, and so does the place in ``--help`` of a config that mixes the group in (a dataclass keeps
    a redeclared field where its base declared it)."""
    shared = {f.name: f for f in dataclasses.fields(group)}[name]
    meta = shared.metadata
    factory = shared.default_factory if default is dataclasses.MISSING else dataclasses.MISSING
    return field(shared.default if default is dataclasses.MISSING else default,
                 meta["help"] if help is None else help, flag=meta.get("flag"),
                 positional=meta.get("positional", False), default_factory=factory, keyed=meta["keyed"],
                 metavar=meta.get("metavar"))


def _type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp):
    """Return (inner_type, allows_none) for ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, name: str, source: str, *, split: bool = True) -> Any:
    """Check (and gently convert) one config value against its annotated type. A list's text items are split
    at commas (``--tasks a,b``) unless ``split`` is False (positional arguments, each one value)."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: '{name}' must not be empty")
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        choices = typing.get_args(inner)
        if value not in choices:
            raise ConfigError(f"{source}: '{name}' must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(inner) or (Any,)
        if isinstance(value, str):
            value = [value]
        if split and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = [part.strip() for v in value for part in v.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{name}' must be a list, got {value!r}")
        items = [coerce(v, item_tp, name, source) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{name}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(inner):
        if isinstance(value, inner):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{name}' must be a mapping, got {value!r}")
        return from_dict(inner, value, f"{source}: {name}")
    if inner is Any:
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{source}: '{name}' must be true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: '{name}' must be an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: '{name}' must be an integer, got {value!r}") from None
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: '{name}' must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: '{name}' must be a number, got {value!r}") from None
        if not math.isfinite(number):  # NaN passes every `< 0` check and inf trains a NaN adapter
            raise ConfigError(f"{source}: '{name}' must be a finite number, got {value!r}")
        return number
    if inner is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{source}: '{name}' must be text, got {value!r}")
        return _valid_text(str(value), name, source)
    if inner is Path:
        return Path(_valid_text(str(value), name, source))
    return value


def _valid_text(value: str, name: str, source: str) -> str:
    """A lone surrogate (a YAML "\\ud800", or argv bytes that are not UTF-8) would fail only when the
    setting is written into a run record, after the work is done."""
    bad = userfiles.lone_surrogate(value)
    if bad:
        raise ConfigError(f"{source}: '{name}' {bad}")
    return value


def from_dict(cls: type[T], data: dict, source: str = "config") -> T:
    """Build ``cls`` from a mapping, refusing unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                          f"known keys: {', '.join(sorted(names))}")
    positional = {f.name for f in dataclasses.fields(cls) if f.metadata.get("positional")}
    values = {k: coerce(v, hints[k], k, source, split=k not in positional) for k, v in data.items()}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check and not isinstance(obj, Validated):  # a Validated config checked itself when built
        check()
    return obj


def keyed_settings(config) -> dict:
    """The config's settings that change results (fields not marked ``keyed=False``), JSON-ready."""
    plain = to_dict(config)
    return {f.name: plain[f.name] for f in dataclasses.fields(config)
            if f.metadata.get("keyed", True) is True
            or (f.metadata.get("keyed") == IF_SET and getattr(config, f.name) != _default(f))}


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh one from its factory); MISSING for a required field."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def stage_key(*parts: Any, length: int = 16) -> str:
    """The one key of a stage: a hash of its config's keyed settings and its inputs' keys, in order.

    Dataclass configs contribute :func:`keyed_settings`; other parts (upstream keys, extra settings)
    go in as they are; a single part is hashed on its own (the form eval caches have always used)."""
    plain = [keyed_settings(p) if dataclasses.is_dataclass(p) else p for p in parts]
    blob = json.dumps(plain[0] if len(plain) == 1 else plain, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def changed_settings(before: dict, after: dict) -> list[str]:
    """Names of the settings whose values differ between two :func:`keyed_settings` dicts."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


class Validated:
    """Base of the stage configs: ``validate()`` runs whenever an instance is built, however it is built
    (``from_dict``, a direct call, ``dataclasses.replace``), so no config escapes its checks."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for values a stage cannot run with; subclasses extend."""


@dataclasses.dataclass(frozen=True)
class ColumnMapping:
    """Dataset column names for our fields, from ``field=column`` pairs (``--columns``); checked when built."""

    pairs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.mapping()

    def mapping(self) -> dict[str, str] | None:
        out = {}
        for pair in self.pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ConfigError(f"column mapping '{pair}' must look like field=column")
            out[key.strip()] = value.strip()
        return out or None


def column_mapping(pairs: list[str]) -> dict[str, str] | None:
    """``{field: column}`` from ``--columns`` pairs, or None when there are none."""
    return ColumnMapping(tuple(pairs)).mapping()


def load_yaml(path: str | Path) -> dict:
    """A config file: duplicate keys refused, aliases bounded (see :mod:`sdft.base.userfiles`)."""
    path = Path(path)
    special = userfiles.special_kind(path)
    if special:
        raise ConfigError(f"{path}: is {special}, not a config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    data = userfiles.loads_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def to_dict(obj) -> dict:
    """A JSON-ready dict of a config (paths as strings)."""
    def plain(v):
        if isinstance(v, Path):
            return str(v)
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _argument_groups(parser: argparse.ArgumentParser, cls) -> dict[str, Any]:
    """Where each field's flag is listed: a field a config inherits from a settings mixin (e.g.
    ``sdft.generation.EngineSettings``) goes in a section headed by the mixin's ``section``, after the
    config's own flags (a dataclass puts inherited fields first, which would open ``--help`` with them).
    Sections follow the order in which the config's class statement names its mixins."""
    where: dict[str, Any] = {}
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            group = parser.add_argument_group(getattr(base, "section", base.__name__))
            for f in dataclasses.fields(base):  # a mixin built on another lists the other's fields too
                where.setdefault(f.name, group)
    return where


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one flag per dataclass field. Defaults stay None so we can tell what the user set."""
    hints = _type_hints(cls)
    groups = _argument_groups(parser, cls)
    for f in dataclasses.fields(cls):
        target = groups.get(f.name, parser)
        inner, _ = _unwrap_optional(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata.get("help", "")}
        if f.metadata.get("positional"):  # a list takes every remaining argument
            many = typing.get_origin(inner) in (list, tuple)
            target.add_argument(f.name, nargs="*" if many else "?", default=None, help=kwargs["help"],
                                metavar=f.metadata.get("metavar"))
            continue
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(inner) in (list, tuple):
            kwargs["action"] = "append"  # repeatable; each value may also be comma-separated
        elif typing.get_origin(inner) is typing.Literal:
            kwargs["choices"] = typing.get_args(inner)
        elif typing.get_origin(inner) is dict or dataclasses.is_dataclass(inner):
            continue  # nested settings come from YAML only
        if f.default is not dataclasses.MISSING and f.default is not None and "help" in kwargs:
            kwargs["help"] += f" (default: {f.default})"
        target.add_argument(flag_name(f), **kwargs)


def resolve(cls: type[T], args: argparse.Namespace, config_path: str | None = None,
            presets: dict[str, dict] | None = None, preset: str | None = None) -> T:
    """Merge, lowest first: dataclass defaults < preset < YAML file < flags the user gave."""
    data: dict[str, Any] = {}
    if preset:
        if not presets or preset not in presets:
            raise ConfigError(f"unknown preset '{preset}'; known: {', '.join(sorted(presets or {}))}")
        data.update(presets[preset])
    source = "command line"
    if config_path:
        data.update(load_yaml(config_path))
        source = str(config_path)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    return from_dict(cls, data, source)
