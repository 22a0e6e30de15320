"""The ``onpolicy`` arm: on-policy self-distillation (Shenfeld, Damani, Hübotter, Agrawal, arXiv 2601.19897).

The student answers the plain prompt (sampled, on-policy); the same model, shown the dataset's response as
a demonstration inside its prompt, is the teacher; the student is trained toward the teacher's token
distribution on the student's own answer. Training goes through TRL's ``trl.experimental.sdft``
(``SDFTTrainer``, ``SDFTConfig``), not a loss of ours. What this module adds is the translation from our
``TrainConfig`` (same data selection, batch order, optimiser, LoRA/full, checkpoints and ``train.json`` as
the other arms) and the record of what the generation cost.

Defaults, and where they come from (the record in ``train.json`` repeats them):

* divergence: reverse KL(student || teacher) over the full vocabulary -- what the paper states and what
  the authors' code computes (``alpha = 1``, full log-softmax); TRL's own default is top-100 logits with
  alpha 0.5 (a generalised JSD). ``--onpolicy-divergence`` / ``--onpolicy-loss`` expose both.
* teacher: the frozen seed (``base``), TRL's default and the cheapest (with LoRA it is the same weights
  with the adapter switched off). The authors' code uses an EMA of the student, updated every step with
  rate 0.01 (``--onpolicy-teacher ema``); over a few hundred steps the two stay close.
* teacher prompt, one answer per prompt, temperature 1, the first 3 answer tokens left out of the loss:
  the authors' code.

The prompt goes to TRL as chat messages, so that TRL composes the teacher's prompt inside the last user
turn and applies the chat template itself; a tokenizer without a chat template is refused.
"""

from __future__ import annotations

from sdft.base.errors import ConfigError

OPTIONS = ("onpolicy_teacher", "onpolicy_teacher_update_rate", "onpolicy_divergence", "onpolicy_loss",
           "onpolicy_topk", "onpolicy_max_new_tokens", "onpolicy_temperature", "onpolicy_skip_tokens",
           "onpolicy_teacher_prompt")
# TRL's names for our options (SDFTConfig fields).
_TRL_NAMES = {"onpolicy_teacher": "teacher_model_kind", "onpolicy_teacher_update_rate": "teacher_update_rate",
              "onpolicy_divergence": "distillation_alpha", "onpolicy_loss": "distillation_mode",
              "onpolicy_topk": "distillation_topk", "onpolicy_max_new_tokens": "max_completion_length",
              "onpolicy_temperature": "temperature", "onpolicy_skip_tokens": "num_loss_tokens_to_skip",
              "onpolicy_teacher_prompt": "teacher_prompt_template"}


def validate(config) -> None:
    """The onpolicy options of a ``TrainConfig``: refused when set without ``--objective onpolicy``."""
    import dataclasses

    if config.objective != "onpolicy":
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        changed = [name for name in OPTIONS if getattr(config, name) != defaults[name]]
        if changed:
            raise ConfigError(f"{', '.join(changed)} appl{'ies' if len(changed) == 1 else 'y'} to "
                              "--objective onpolicy only")
        return
    if config.method == "qlora":
        raise ConfigError("--objective onpolicy runs with --method lora or full (TRL's SDFTTrainer needs the "
                          "base weights unquantised to act as the teacher)")
    if config.mix_ratio not in (None, 0.0):
        raise ConfigError("--objective onpolicy learns from the original responses (the demonstrations); "
                          "--mix-ratio does not apply")
    _check_numbers(config)
    try:
        config.onpolicy_teacher_prompt.format(prompt="", privileged_context="")
        has_both = all(f"{{{name}}}" in config.onpolicy_teacher_prompt for name in ("prompt", "privileged_context"))
    except (KeyError, IndexError, ValueError):
        has_both = False
    if not has_both:
        raise ConfigError("'onpolicy_teacher_prompt' must contain {prompt} and {privileged_context} and no other "
                          "braces (write literal braces as {{ and }})")


def _check_numbers(config) -> None:
    if not 0 <= config.onpolicy_divergence <= 1:
        raise ConfigError(f"'onpolicy_divergence' must lie in [0, 1] (1 = reverse KL, 0 = forward KL), "
                          f"got {config.onpolicy_divergence}")
    if config.onpolicy_loss == "sampled_token" and config.onpolicy_divergence != 1:
        raise ConfigError("onpolicy_loss sampled_token estimates the reverse KL only: set onpolicy_divergence 1")
    if not 0 < config.onpolicy_teacher_update_rate <= 1:
        raise ConfigError(f"'onpolicy_teacher_update_rate' must lie in (0, 1], got {config.onpolicy_teacher_update_rate}")
    for name in ("onpolicy_topk", "onpolicy_max_new_tokens"):
        if getattr(config, name) < 1:
            raise ConfigError(f"'{name}' must be at least 1, got {getattr(config, name)}")
    if config.onpolicy_skip_tokens < 0 or config.onpolicy_temperature <= 0:
        raise ConfigError("'onpolicy_skip_tokens' must be >= 0 and 'onpolicy_temperature' positive")


def trl_settings(config) -> dict:
    """Our options as ``SDFTConfig`` keyword arguments (also what ``train.json`` records)."""
    settings = {trl: getattr(config, ours) for ours, trl in _TRL_NAMES.items()}
    settings.update(num_generations=1, teacher_sync_steps=1, max_prompt_length=config.max_length)
    return settings


def build_trainer(config, model, tokenizer, ordered: list, args: dict, peft_config, callbacks: list):
    """TRL's ``SDFTTrainer`` over ``ordered`` (our batch order, read as it is: ``shuffle_dataset=False``)."""
    import datasets
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    if any(t.messages is None for t in ordered):
        raise ConfigError("--objective onpolicy needs chat-template rendering (TRL builds the teacher's prompt "
                          "inside the last user turn): use a tokenizer with a chat template, --template-mode "
                          "auto or chat, and a prompt template without an assistant prefix")
    eos = tokenizer.eos_token or ""
    dataset = datasets.Dataset.from_list([
        {"prompt": t.messages, "privileged_context": (t.response.removesuffix(eos) if eos else t.response).strip()}
        for t in ordered])
    sdft_args = SDFTConfig(**args, **trl_settings(config), shuffle_dataset=False, disable_dropout=True)
    # The trainer pads prompts on the left itself; generation wants the tokenizer to agree.
    tokenizer.padding_side = "left"
    return SDFTTrainer(model=model, args=sdft_args, train_dataset=dataset, processing_class=tokenizer,
                       peft_config=peft_config, callbacks=callbacks)


def cost(log_history: list[dict], config, global_batch: int) -> dict:
    """What on-policy training spent on generation: answers sampled, their mean length, share cut by the
    budget, per step and in total (the report's cost table reads this)."""
    steps = [h for h in log_history if "completions/mean_length" in h and "step" in h]
    lengths = [h["completions/mean_length"] for h in steps]
    clipped = [h.get("completions/clipped_ratio", 0.0) for h in steps]
    answers = len(steps) * global_batch
    return {"settings": trl_settings(config), "answers_sampled": answers,
            "mean_answer_tokens": sum(lengths) / len(lengths) if lengths else None,
            "generated_tokens": round(sum(lengths) * global_batch) if lengths else 0,
            "share_cut_by_budget": sum(clipped) / len(clipped) if clipped else None,
            "distillation_loss": [h.get("self_distillation/distillation_loss") for h in steps]}
