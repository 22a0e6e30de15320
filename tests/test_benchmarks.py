"""The benchmarks reach into sdft by name: a function they time must still exist where they look for it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH_ARM = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_arm.py"


def _table(name: str):
    """One of bench_arm's tables, read without importing the benchmark (it instruments sdft when run)."""
    for node in ast.parse(BENCH_ARM.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"bench_arm.py defines no {name}")


def _resolve(module_name: str, attribute: str):
    owner = importlib.import_module(module_name)
    for name in attribute.split("."):
        assert hasattr(owner, name), f"bench_arm names {module_name}:{attribute}, which no longer exists"
        owner = getattr(owner, name)
    return owner


@pytest.mark.parametrize("module_name, attribute, label", _table("PARTS"))
def test_every_timed_part_exists(module_name, attribute, label):
    assert callable(_resolve(module_name, attribute))


@pytest.mark.parametrize("setting", sorted({key for settings in _table("CONFIGS").values() for key in settings
                                            if ":" in key}))
def test_every_patched_attribute_exists(setting):
    _resolve(*setting.split(":"))
