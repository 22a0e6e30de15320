"""Parameter shift: the L2 norm of the weight change that fine-tuning made, per module and in total.

The paper uses it as one measure of how far a fine-tuned model moved from the seed model (SDFT should move
it less). For a LoRA adapter the change of an adapted module is ``B @ A * scale``; its norm is computed from
the adapter file alone, through the r x r products ``(B^T B)(A A^T)``, so neither the base weights nor the
full out x in matrix are ever built. For full fine-tuning (``--tuned DIR``) it is ``tuned - base`` per weight
tensor, read one tensor at a time so that large models fit in memory. Results go to ``weight_shift.json``.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sdft.base import layout
from sdft.base.config import DEFAULT_MODEL, Validated, field
from sdft.base.errors import ConfigError, SdftError

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?:embedding_)?(?P<part>[AB])(?:\.weight)?$")


@dataclass
class ShiftConfig(Validated):
    model: str = field(DEFAULT_MODEL, "base model (alias, hub id, folder); needed with --tuned")
    adapter: str | None = field(None, "LoRA adapter folder (an 'sdft train' output)")
    tuned: str | None = field(None, "folder of fully fine-tuned (or merged) weights, compared with --model")
    out: str | None = field(None, f"folder for {layout.WEIGHT_SHIFT} (default: the adapter or tuned folder)")

    def validate(self) -> None:
        if bool(self.adapter) == bool(self.tuned):
            raise ConfigError("shift needs exactly one of --adapter DIR (LoRA) or --tuned DIR (full weights)")


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
            "modules": modules, "scale": sorted(set(scales.values())), "total": _total(modules.values())}


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
            "total": _total(modules.values()), "only_in_tuned": sorted(only_tuned),
            "only_in_base": sorted(set(base_files) - matched)}


def _total(values) -> float:
    return math.sqrt(sum(v * v for v in values))


def parameter_shift(config: ShiftConfig) -> dict:
    """Compute the shift for ``--adapter`` or ``--tuned``, save ``weight_shift.json``, return the result."""
    from sdft.base.store import write_json

    config.validate()
    if config.adapter:
        result = lora_shift(config.adapter)
        folder = Path(config.adapter)
    else:
        from sdft.models.resolve import resolve_model

        result = full_shift(resolve_model(config.model), config.tuned)
        folder = Path(config.tuned)
    out = Path(config.out) if config.out else folder
    result["model"] = config.model
    result["by_kind"] = _by_kind(result["modules"])
    result["saved"] = str(out / layout.WEIGHT_SHIFT)
    write_json(out / layout.WEIGHT_SHIFT, result)
    return result


def _by_kind(modules: dict[str, float]) -> dict[str, float]:
    """Totals per module kind (q_proj, v_proj, ...), the view that compares runs at a glance."""
    kinds: dict[str, list[float]] = defaultdict(list)
    for name, value in modules.items():
        kinds[name.rsplit(".", 1)[-1]].append(value)
    return {kind: _total(values) for kind, values in sorted(kinds.items())}


def summarize(result: dict, max_rows: int = 40) -> str:
    modules = result["modules"]
    changed = {name: value for name, value in modules.items() if value > 0}
    rows = sorted(changed.items())
    notes = []
    if len(rows) > max_rows:  # a 7B model has hundreds of modules: show the largest, the rest are in weight_shift.json
        rows = sorted(changed.items(), key=lambda kv: -kv[1])[:max_rows]
        notes.append(f"{len(changed) - max_rows} smaller changes not shown")
    if len(changed) < len(modules):  # e.g. a merged LoRA: every module it did not adapt is unchanged
        notes.append(f"{len(modules) - len(changed)} unchanged modules not shown")
    formula = "||B @ A * scale||" if result["kind"] == "lora" else "||tuned - base||"
    lines = [f"parameter shift ({result['kind']}: {formula}, L2 norm)"]
    if rows:
        width = max(len(name) for name, _ in rows)
        lines.append(f"  {'module'.ljust(width)}  L2")
        lines += [f"  {name.ljust(width)}  {value:.6g}" for name, value in rows]
    if notes:
        lines.append(f"  ({'; '.join(notes)}; all are in {result['saved']})")
    lines += ["  by kind: " + ", ".join(f"{k} {v:.6g}" for k, v in result["by_kind"].items() if v > 0 or not changed),
              f"  total ({len(modules)} modules): {result['total']:.6g}", f"  saved: {result['saved']}"]
    return "\n".join(lines)
