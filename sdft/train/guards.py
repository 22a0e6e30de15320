"""Guards of a training run: LoRA targets that exist, trained weights that are finite, and an honest
account of what Ctrl-C left behind. Kept apart from :mod:`sdft.train.stage` so that module stays about the run.
"""

from __future__ import annotations

from pathlib import Path

from sdft.base.errors import ConfigError, SdftError
from sdft.models import resolve
from sdft.train import data as train_data


def check_lora_targets(config, model=None) -> None:
    """Every --lora-targets name must match a module of this model (PEFT's own error is a traceback).

    Without ``model``, the model's skeleton is built on the meta device from its config.json: no weights
    are read, so a typo is reported in a second, before a large model loads.
    """
    if config.method == "full" or config.lora_targets == ["all-linear"]:
        return
    import torch

    if model is None:
        model = _skeleton(config.model)

    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and name != "lm_head"})
    suffixes = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} | \
        {name for name, _ in model.named_modules()}
    unknown = [t for t in config.lora_targets if t not in suffixes]
    if unknown:
        raise ConfigError(f"--lora-targets {', '.join(unknown)}: no such module in {config.model}; its linear "
                          f"layers are {', '.join(linear) or '(none)'} (or use all-linear)")


def _skeleton(model_name: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve.resolve_model(model_name)))


def check_finite(model, config) -> None:
    """A learning rate that is finite but far too high leaves NaN weights (the logged loss may even read
    0): refuse to save them as a result instead of exiting 0 with an unusable adapter."""
    import torch

    broken = [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if broken:
        raise SdftError(f"training diverged: {len(broken)} trained tensor(s) hold NaN or inf (e.g. {broken[0]}); "
                        f"nothing was saved as the result. Lower --learning-rate (was {config.learning_rate:g}) "
                        "and rerun with --overwrite")


def interrupted(config) -> str:
    """What Ctrl-C left behind: only checkpoints can be resumed, and the first comes after --save-steps."""
    checkpoint = train_data.last_checkpoint(Path(config.out) / train_data.CHECKPOINTS) if config.out else None
    if checkpoint is None:
        return (f"no checkpoint had been written yet (one every --save-steps {config.save_steps} steps), so "
                "nothing of this training was saved; rerun the same command to start again.")
    return f"{checkpoint.name} is saved; rerun the same command with --resume to continue from it."
