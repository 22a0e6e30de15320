"""``sdft train --padding-free``: each micro-batch's examples end to end in one row instead of padded to the
longest (docs/training.md; measured in docs/performance.md).

Two pieces: the collator, and a check that the model keeps the examples of a row apart. The row's position ids
restart at every example, and transformers turns them into a block-diagonal causal mask, but only in models
whose code hands the position ids to the mask (with transformers 5.19: Llama, Qwen2, Qwen3, Mistral, Gemma 2,
Phi-3 and GPT-2 do; OPT, Falcon and Bloom do not): elsewhere examples would silently attend to one another, so
such a model is refused.
"""

from __future__ import annotations

import contextlib

from sdft.base.errors import SdftError


def collator(tokenizer):
    """TRL's own collator in its padding-free mode, handed to the trainer as a collator of ours: TRL refuses
    ``SFTConfig.padding_free`` together with a ``max_length``, and this way it still tokenizes, masks and
    truncates every example exactly as for a padded run; only the micro-batch's layout changes. (The pad id
    is never used: one row has nothing to pad.)"""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)


def check_examples_kept_apart(model, precision: str) -> None:
    """Refuse a model in which the second example of a packed row sees the first.

    Two runs of 6 tokens: the second alone, the second after the first with positions restarting (packed), and
    the second after the first with positions running on (joined: it sees the first by construction). Packed
    must match alone far more closely than joined does; a model whose mask ignores the restart would put the
    packed logits as far from alone as the joined ones, whatever the precision's rounding."""
    import torch

    device = next(model.parameters()).device
    first, second = torch.arange(100, 106, device=device), torch.arange(200, 206, device=device)
    restart = torch.arange(6, device=device)

    def logits(ids, positions):
        return model(input_ids=ids[None], position_ids=positions[None], use_cache=False).logits[0, -6:].float()

    was_training = model.training
    model.eval()
    try:
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        mixed = torch.autocast(device.type, dtype=half) if half else contextlib.nullcontext()
        with torch.no_grad(), mixed:
            alone = logits(second, restart)
            packed = logits(torch.cat([first, second]), torch.cat([restart, restart]))
            joined = logits(torch.cat([first, second]), torch.arange(12, device=device))
    finally:
        model.train(was_training)
    if (packed - alone).abs().max() >= 0.1 * (joined - alone).abs().max():
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise SdftError(f"--padding-free: this model ({kind}) lets the examples of a packed row attend to one "
                        "another (its attention mask does not follow the restarting position ids); train it "
                        "without --padding-free")
