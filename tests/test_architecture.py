"""The folders tell the pipeline: no import cycle between sdft's modules, no stage reaching into another
stage's modules (what two stages share lives below both), `sdft --help` (each command's too) and `import sdft`
stay free of heavy libraries, and sdft's own imports stand at the top of each module (LAZY_IMPORTS: the exceptions).

Imports are read with ``ast`` (inside functions too: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sdft
from sdft.cli import COMMANDS

PACKAGE = Path(sdft.__file__).parent
STAGES = {"distill", "train", "evaluate", "compare", "report", "experiment"}
ORCHESTRATOR = "experiment"  # `sdft run` drives the stages through their entry modules
BELOW = {"base", "models", "generation", "sandbox", "tasks"}
# A stage's entry modules: the ones the CLI names, its settings, and interpolation (a post-training step that
# only `sdft run` drives).
ENTRIES = {module for module, *_ in COMMANDS.values()} | {f"sdft.{s}.config" for s in STAGES} | {"sdft.train.interp"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """sdft modules imported by the file at ``path`` (``from pkg import mod`` counts as ``pkg.mod``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sdft"}
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "sdft":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _packages_of(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). A package's ``__init__`` importing
    its own submodules is not a cycle: Python imports the package first in any case."""
    edges = {m: {d for d in deps if m not in _packages_of(d) and d not in _packages_of(m)} for m, deps in graph.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _folder(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_no_stage_imports_another_stage():
    wrong = []
    for module, deps in _graph().items():
        here = _folder(module)
        for dep in deps:
            there = _folder(dep)
            if there not in STAGES or there == here:
                continue
            if here == ORCHESTRATOR and dep in ENTRIES:
                continue
            wrong.append(f"{module} -> {dep}")
    assert wrong == []


def test_nothing_below_the_stages_imports_a_stage():
    wrong = [f"{m} -> {d}" for m, deps in _graph().items() if _folder(m) in BELOW or _folder(m) is None
             for d in deps if _folder(d) in STAGES and m != "sdft.cli"]
    assert wrong == []


def test_the_package_root_holds_only_the_entry_points():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py"]
    assert STAGES | BELOW <= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


HEAVY = ("torch", "transformers", "vllm", "trl", "matplotlib", "peft", "datasets", "pandas")


def _heavy_after(code: str) -> str:
    """The heavy libraries in ``sys.modules`` after ``code`` runs in a fresh interpreter, as printed there."""
    code += f"\nimport sys\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def _help_code(argv: list[str]) -> str:
    return ("import contextlib, io\nfrom sdft.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass")


def test_help_imports_no_heavy_library():
    assert _heavy_after(_help_code(["--help"])) == "[]"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_help_imports_no_heavy_library(command):
    """``sdft COMMAND --help`` imports the command's stage module (its config class builds the flags), and
    with it every sdft module that one imports at its top."""
    assert _heavy_after(_help_code([command, "--help"])) == "[]"


def test_importing_sdft_imports_no_heavy_library():
    assert _heavy_after("import sdft") == "[]"


# sdft modules imported inside a function, and why they cannot be imported at the top of the module
# (issue 24: imports at the top unless a heavy library would reach `sdft --help`, or a cycle would form).
LAZY_IMPORTS = {
    ("sdft.generation", "sdft.generation.vllm_backend"): "cycle: vllm_backend imports sdft.generation",
    ("sdft.experiment.pipeline", "sdft.report.stage"):
        "heavy: numpy and scipy (seed statistics), a second more for `sdft run --help`",
}


def _function_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """sdft modules imported inside a function (or a method) of the file at ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in node.body:
                found |= _imports_in(inner, modules)
    return found


def _imports_in(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    found = set()
    for inner in ast.walk(node):
        if isinstance(inner, ast.Import):
            found |= {a.name for a in inner.names if a.name.split(".")[0] == "sdft"}
        elif isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").split(".")[0] == "sdft"):
            for alias in inner.names:
                full = f"{inner.module}.{alias.name}"
                found.add(full if full in modules else inner.module or f"relative import of {alias.name}")
    return found


def test_sdft_modules_are_imported_at_the_top():
    """A module's imports of sdft's own code stand at its top, where a reader sees what it depends on; the
    few that must stay inside a function are listed, with why, in LAZY_IMPORTS."""
    modules = _modules()
    lazy = {(name, dep) for name, path in modules.items() for dep in _function_imports(path, modules)}
    assert sorted(lazy - set(LAZY_IMPORTS)) == []
    assert sorted(set(LAZY_IMPORTS) - lazy) == []  # an entry no longer needed goes


def test_the_lazy_import_check_sees_a_planted_one(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import json\n\n\nclass C:\n    def m(self):\n        if json:\n"
                       "            from sdft.base import layout\n        return layout\n\n\n"
                       "async def f():\n    import sdft.base.store\n")
    assert _function_imports(planted, _modules()) == {"sdft.base.layout", "sdft.base.store"}


def test_the_benchmarks_import_names_that_exist():
    """Benchmarks run outside the test suite; a module move must not leave them importing what is gone."""
    import importlib

    missing = []
    for path in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sdft":
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and f"{node.module}.{a.name}" not in _modules()]
    assert missing == []


def test_no_two_test_files_share_a_name():
    """The test folders are not packages (a test imports its sibling helpers by name), so pytest imports each
    test file by its base name: two files of one name anywhere under tests/ stop the collection."""
    names = [p.name for p in Path(__file__).parent.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
