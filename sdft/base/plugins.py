"""User code named as ``"module:name"`` (backends, tasks, checkers, filters), imported only when used."""

from __future__ import annotations

import importlib

from sdft.base.errors import ConfigError


def import_target(target: str, what: str = "object"):
    """Import ``"module:attr"``; a clear error when it is not there."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} '{target}' must look like 'module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {what} module '{module_name}': {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module '{module_name}' has no {what} '{attr}'") from None
