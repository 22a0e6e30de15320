"""Weight interpolation between the seed and a fine-tuned model (WiSE-FT, Wortsman et al. 2022).

``theta(alpha) = theta_seed + alpha * (theta_tuned - theta_seed)``: alpha 0 is the seed, 1 the fine-tuned
model, values between trade what was learned against what was kept, with no extra training. For a LoRA
adapter the change is ``B @ A * scale``, so scaling every ``lora_B`` by alpha gives exactly the
interpolated model; the result is an ordinary adapter folder that every stage (eval, shift) loads as it
loads the adapter it came from. ``interp.json`` (``layout.INTERP_RECORD``) in the folder records the source and alpha.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from sdft.base import layout
from sdft.base.errors import ConfigError, SdftError
from sdft.models import card

_ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file name
# What a training folder holds besides the adapter: records of that run, not part of the scaled adapter.
# Its model card is written anew (the scaled adapter is another model).
_NOT_COPIED = {_ADAPTER_WEIGHTS, layout.STAGE, layout.TRAIN_RECORD, layout.LOSS_PLOT, layout.MODEL_CARD}


def check_alphas(alphas: list[float]) -> list[float]:
    """Alphas sorted and de-duplicated; refuses values outside [0, 1] (extrapolation is not WiSE-FT)."""
    if not alphas:
        raise ConfigError("interp needs at least one alpha (e.g. alphas: [0.25, 0.5, 0.75])")
    bad = [a for a in alphas if not 0 <= a <= 1]
    if bad:
        raise ConfigError(f"interp alphas must lie in [0, 1] (0 = seed, 1 = fine-tuned), got {bad}")
    return sorted(set(float(a) for a in alphas))


def scale_adapter(source: str | Path, target: str | Path, alpha: float) -> dict:
    """Write ``target``: the LoRA adapter in ``source`` with every ``lora_B`` multiplied by ``alpha``.

    Returns (and saves as ``interp.json``) what was done. The tokenizer and adapter config are copied as
    they are, so the scaled adapter loads exactly like the original one.
    """
    from safetensors.torch import load_file, save_file

    began = time.perf_counter()
    source, target = Path(source), Path(target)
    check_alphas([alpha])
    config_file = source / "adapter_config.json"
    if not config_file.is_file():
        raise SdftError(f"{source}: interp scales a LoRA adapter, and this folder holds none "
                        "(train the vanilla arm with method lora)")
    config = json.loads(config_file.read_text())
    if config.get("use_dora"):
        raise SdftError(f"{source}: a DoRA adapter rescales the base weights, so scaling lora_B is not "
                        "an interpolation; use plain LoRA for the interp arm")
    weights = load_file(source / _ADAPTER_WEIGHTS)
    scaled = [k for k in weights if ".lora_B" in k or ".lora_embedding_B" in k]
    if not scaled:
        raise SdftError(f"{source}: the adapter holds no lora_B weights to scale")
    for key in scaled:
        weights[key] = weights[key] * alpha
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        # The adapter's own files only: not checkpoints, nor a merged copy, nor the training run's records.
        if item.is_file() and item.name not in _NOT_COPIED:
            shutil.copy2(item, target / item.name)
    save_file(weights, target / _ADAPTER_WEIGHTS, metadata={"format": "pt"})
    record = {"method": "wise-ft", "source_adapter": str(source), "alpha": alpha,
              "scaled_tensors": len(scaled), "seconds": round(time.perf_counter() - began, 3)}
    (target / layout.INTERP_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    card.refresh(target)
    return record
