"""The weight maths of adapters: the L2 norm of the change a LoRA adapter (or a full fine-tune) makes.

For a LoRA adapter the change of an adapted module is ``B @ A * scale``; its norm is computed from the adapter
file alone, through the r x r products ``(B^T B)(A A^T)``, so neither the base weights nor the full out x in
matrix are ever built. For full fine-tuning it is ``tuned - base`` per weight tensor, read one tensor at a time
so that large models fit in memory. Used by `sdft shift` and by `sdft train`'s record.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

from sdft.base.errors import SdftError

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?:embedding_)?(?P<part>[AB])(?:\.weight)?$")


def _read_tensors(folder: Path, stem: str) -> dict:
    """All tensors of ``<stem>.safetensors`` (or ``<stem>.bin``) in ``folder``."""
    from safetensors.torch import load_file

    if (folder / f"{stem}.safetensors").is_file():
        return load_file(folder / f"{stem}.safetensors")
    if (folder / f"{stem}.bin").is_file():
        import torch
        return torch.load(folder / f"{stem}.bin", map_location="cpu", weights_only=True)
    raise SdftError(f"{folder}: no {stem}.safetensors (is this an 'sdft train' LoRA output folder?)")


def lora_shift(adapter: str | Path) -> dict:
    """Per adapted module, ``||B @ A * scale||_F``; total = sqrt of the sum of squares."""
    import torch
    from peft.utils.other import get_pattern_key

    folder = Path(adapter)
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SdftError(f"{folder}: cannot read adapter_config.json ({exc})") from None
    if cfg.get("use_dora"):
        raise SdftError(f"{folder}: DoRA adapters rescale the base weights, so their shift is not B @ A * scale; "
                        "merge the adapter and use --tuned instead")
    parts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in _read_tensors(folder, "adapter_model").items():
        match = _LORA_KEY.match(key)
        if match:
            parts[match["module"]][match["part"]] = tensor
    if not parts:
        raise SdftError(f"{folder}: the adapter holds no LoRA A/B weights")
    alpha_pattern = cfg.get("alpha_pattern") or {}
    modules, scales = {}, {}
    for name, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise SdftError(f"{folder}: module {name} has lora_{'A' if 'A' not in ab else 'B'} missing")
        a = ab["A"].double().reshape(ab["A"].shape[0], -1)  # r x in (conv kernels flattened)
        b = ab["B"].double().reshape(ab["B"].shape[0], -1)  # out x r
        if b.shape[1] != a.shape[0]:  # embedding adapters store A as (r, vocab) and B as (dim, r) too
            raise SdftError(f"{folder}: module {name} has LoRA shapes {tuple(a.shape)} and {tuple(b.shape)}")
        rank = a.shape[0]
        alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), name), cfg.get("lora_alpha", rank))
        scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
        # ||B A||_F^2 = trace((B^T B)(A A^T)): r x r matrices instead of the out x in product.
        squared = torch.trace((b.T @ b) @ (a @ a.T)).clamp(min=0).item()
        modules[name] = math.sqrt(squared) * abs(scale)
        scales[name] = scale
    return {"kind": "lora", "adapter": str(folder), "base_model": cfg.get("base_model_name_or_path"),
            "modules": modules, "scale": sorted(set(scales.values())), "total": total_norm(modules.values())}


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    if (folder / "adapter_config.json").is_file():
        raise SdftError(f"{folder} holds a LoRA adapter, not full weights: use --adapter {folder}")
    raise SdftError(f"{folder}: no model.safetensors (or sharded index) found")


def full_shift(base: str | Path, tuned: str | Path) -> dict:
    """Per module (weight and bias together), ``||tuned - base||_F``, streaming one tensor at a time."""
    from safetensors import safe_open

    base_files = {}
    for path in _weight_files(Path(base)):
        with safe_open(path, framework="pt") as fh:
            base_files.update({key: path for key in fh.keys()})
    squares: dict[str, float] = defaultdict(float)
    only_tuned = []
    matched = set()
    for path in _weight_files(Path(tuned)):
        with safe_open(path, framework="pt") as fh:
            for key in fh.keys():
                if key not in base_files:
                    only_tuned.append(key)
                    continue
                new = fh.get_tensor(key)
                with safe_open(base_files[key], framework="pt") as bh:
                    old = bh.get_tensor(key)
                if new.shape != old.shape:
                    raise SdftError(f"{key}: shape {tuple(new.shape)} in {tuned} but {tuple(old.shape)} in {base}; "
                                    "the tuned weights are not of this base model")
                module = key.rsplit(".", 1)[0] if key.endswith((".weight", ".bias")) else key
                squares[module] += float((new.double() - old.double()).pow(2).sum())
                matched.add(key)
    if not matched:
        raise SdftError(f"no weight of {tuned} matches one of {base}: is --model the model it was tuned from?")
    modules = {name: math.sqrt(value) for name, value in sorted(squares.items())}
    return {"kind": "full", "tuned": str(tuned), "base_model": str(base), "modules": modules,
            "total": total_norm(modules.values()), "only_in_tuned": sorted(only_tuned),
            "only_in_base": sorted(set(base_files) - matched)}


def total_norm(values) -> float:
    return math.sqrt(sum(v * v for v in values))
