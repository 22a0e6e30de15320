"""`sdft train`'s settings: one dataclass, its flags and YAML keys, and the paper's preset."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import ClassVar, Literal

from sdft.base.config import DEFAULT_MODEL, IF_SET, TaskKind, Validated, column_mapping, field
from sdft.base.errors import ConfigError
from sdft.base.templates import Mode, SystemPromptSettings
from sdft.train import onpolicy
from sdft.train.replay import ReplaySettings

# Reference values of the paper's runs (paper-method §4). Epochs: 2 for general data, 5 for GSM8K and
# OpenFunctions (pass --epochs 5 there).
PRESETS = {
    "paper": {"method": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
              "lora_targets": ["q_proj", "v_proj"], "learning_rate": 1e-4, "lr_scheduler": "cosine",
              "warmup_ratio": 0.0, "batch_size": 2, "grad_accum": 4, "max_length": 1024, "input_separator": "\n",
              "template_mode": "plain",  # the reference rendered prompts as text
              "system_prompt": "template"},
}


@dataclass
class LoraSettings:
    """The adapter's shape (``--method lora`` and ``qlora``), with its checks; a mixin of ``TrainConfig``
    like ``sdft.generation.EngineSettings`` of the generating stages (flat keys, own heading in ``--help``)."""

    section: ClassVar[str] = "LoRA"
    lora_r: int = field(8, "LoRA rank")
    lora_alpha: int = field(16, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = field(0.0, "LoRA dropout")
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"],
                                    help="modules that get LoRA adapters, or all-linear")

    def check_lora_settings(self) -> None:
        """Called by ``TrainConfig.validate``."""
        if self.lora_r < 1:
            raise ConfigError(f"'lora_r' must be at least 1, got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"'lora_alpha' must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout <= 1:
            raise ConfigError(f"'lora_dropout' must be between 0 and 1, got {self.lora_dropout}")
        if not self.lora_targets:
            raise ConfigError("'lora_targets' needs at least one module name (e.g. q_proj,v_proj)")
        if "all-linear" in self.lora_targets and len(self.lora_targets) > 1:
            # a repeated list flag adds to the one before it, so this is how an override goes wrong
            raise ConfigError(f"'lora_targets': all-linear already means every linear layer; give it alone or "
                              f"name modules instead (got {', '.join(self.lora_targets)})")


@dataclass
class TrainConfig(SystemPromptSettings, LoraSettings, ReplaySettings, Validated):
    data: str | None = field(None, "dataset file (original data) or a distilled.jsonl from 'sdft distill'")
    out: str | None = field(None, "output folder: adapter or weights, train.json, loss.png, checkpoints/",
                            keyed=False)
    model: str = field(DEFAULT_MODEL, "seed model: alias, hub id, local folder or .gguf file")
    method: Literal["lora", "full", "qlora"] = field("lora", "LoRA adapter, full fine-tuning, or 4-bit QLoRA (GPU)")
    epochs: float = field(2.0, "passes over the data (paper: 2 general, 5 math / function calling)")
    max_steps: int | None = field(None, "stop after this many optimizer steps (overrides --epochs)")
    batch_size: int = field(2, "examples per device per micro-batch")
    grad_accum: int = field(4, "micro-batches per optimizer step (effective batch = batch x accum x processes)")
    learning_rate: float = field(1e-4, "peak learning rate")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = field(
        "cosine", "learning-rate schedule (cosine decays to 0)")
    warmup_ratio: float = field(0.0, "share of the steps spent warming up the learning rate")
    weight_decay: float = field(0.0, "AdamW weight decay")
    max_length: int = field(1024, "prompt + response tokens; longer examples are cut at the end")
    limit: int | None = field(None, "train on a seeded random subset of N examples")
    seed: int = field(42, "seed for the subset, the mix, the batch order and the adapter init")
    batch_order: Literal["length", "prompt", "index"] = field(
        "length", "micro-batches grouped by prompt + target tokens (length: least padding), by prompt tokens "
                  "(prompt) or not at all (index); prompt and index give every arm at a seed the same examples "
                  "in each micro-batch whatever its targets", keyed=IF_SET)
    mix_ratio: float | None = field(None, "distilled data: share of accepted rewrites used as targets "
                                          "(1 = SDFT, the default; 0 = vanilla on the same records)")
    prose_targets: bool = field(False, "remove list enumeration from the training targets (each run of list items "
                                       "becomes one paragraph, every word kept): the sdft-prose arm's format "
                                       "ablation", keyed=IF_SET)
    task: TaskKind = field("general", "task kind: picks the prompt template (math preset for math)")
    template: str | None = field(None, "prompt template preset (alpaca, math) or YAML/JSON file")
    template_mode: Mode = field("auto", "render through the chat template (chat) or as plain text")
    shape: str = field("auto", "data shape: auto, alpaca, gsm8k, sharegpt, messages, prompt_completion")
    columns: list[str] = field(default_factory=list, help="column mapping, e.g. instruction=prompt,response=answer")
    loss_on: Literal["all_turns", "last_turn"] = field(
        "all_turns", "conversations with several assistant turns: learn every assistant turn (all_turns; chat "
                     "mode) or the last one only (last_turn); single-turn data trains the same either way",
        keyed=IF_SET)
    input_separator: str = field("\n\n", "joins an alpaca instruction and its input (reference code: one newline)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        "auto", "auto: bf16 (or fp16) mixed precision on a GPU, bf16 on CPUs with bf16 matrix units (AVX512-BF16, "
                "AMX), else fp32; with LoRA, bf16 also stores the frozen base in bf16")
    # Not keyed: speed only; the weights agree within float rounding (tests/train/test_train_speed.py).
    response_only_logits: bool = field(True, "project only response positions through the LM head (same loss, "
                                             "less work); off = TRL's default on CPUs, every position", keyed=False)
    compile: Literal["auto", "on", "off"] = field(
        "auto", "torch.compile each decoder layer; auto: on a CPU with a C++ compiler, for a model of 10M+ "
                "parameters and a run of 64+ examples (compiling takes about a minute)", keyed=False)
    # Keyed when set: the same examples and loss, but the sums run in another order (float rounding).
    padding_free: bool = field(False, "lay each micro-batch's examples end to end in one row, no padding (same "
                                      "examples and loss up to float rounding, less compute: most with "
                                      "--batch-order index or prompt, whose micro-batches mix lengths)",
                               keyed=IF_SET)
    gradient_checkpointing: bool = field(False, "recompute activations to save memory (slower)")
    # Not keyed: checkpoint cadence, logging and what happens to the folder do not change the weights.
    save_steps: int = field(50, "write a checkpoint every N optimizer steps", keyed=False)
    save_total_limit: int = field(2, "checkpoints kept while training", keyed=False)
    keep_checkpoints: bool = field(False, "keep checkpoints/ after training finishes", keyed=False)
    resume: bool = field(False, "continue from the last checkpoint in out/checkpoints", keyed=False)
    overwrite: bool = field(False, "discard an earlier run's checkpoints and outputs in out", keyed=False)
    merge: bool = field(False, "also write the LoRA merged into full weights to out/merged")
    logging_steps: int = field(10, "print progress every N steps (the loss is recorded every step)",
                               keyed=False)
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = field(
        "none", "also send the training logs (loss, learning rate, grad norm, tokens) to an experiment tracker "
                "through the Trainer's report_to: tensorboard (event files in OUT/tensorboard), wandb or mlflow "
                "(set up by their own WANDB_* / MLFLOW_* variables)", keyed=False)
    # Arms beyond vanilla / SDFT (README "Arms"): on-policy self-distillation (replay: ReplaySettings).
    objective: Literal["sft", "onpolicy"] = field(
        "sft", "sft: learn the target responses (vanilla, SDFT, replay); onpolicy: the student answers each "
               "prompt and the same model shown the target response teaches it token by token (Shenfeld et "
               "al. 2026, through TRL's experimental SDFTTrainer)")
    onpolicy_teacher: Literal["base", "ema", "live"] = field(
        "base", "onpolicy teacher: the frozen seed (base), an EMA of the student (ema, the authors' code) or "
                "the student itself (live)")
    onpolicy_teacher_update_rate: float = field(0.01, "ema teacher: weight of the student in each update "
                                                      "(the authors' code: 0.01 every step)")
    onpolicy_divergence: float = field(1.0, "onpolicy divergence: 1 = reverse KL(student || teacher), as the "
                                            "paper and its code; 0 = forward KL; between = generalised JSD")
    onpolicy_loss: Literal["full_logits", "topk_logits", "sampled_token"] = field(
        "full_logits", "onpolicy: divergence over the whole vocabulary (the authors' code), the student's top-k "
                       "tokens (TRL's default, cheaper for large vocabularies) or the sampled token only")
    onpolicy_topk: int = field(100, "onpolicy_loss topk_logits: tokens in the support")
    onpolicy_max_new_tokens: int = field(256, "onpolicy: length budget of the student's answer to each prompt")
    onpolicy_temperature: float = field(1.0, "onpolicy: sampling temperature of the student's answers")
    onpolicy_skip_tokens: int = field(3, "onpolicy: first answer tokens left out of the loss (the authors' code: 3)")
    onpolicy_teacher_prompt: str = field(
        "{prompt}\n\nThis is an example for a response to the question:\n{privileged_context}\n\n"
        "Now answer with a response of your own, including the thinking process.",
        "onpolicy: the teacher's user turn ({prompt} = the instruction, {privileged_context} = the target "
        "response); default: the authors' code")

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("train needs --data (a dataset file or a distilled.jsonl)")
        if not self.out:
            raise ConfigError("train needs --out (the folder for the adapter or weights and train.json)")
        for name in ("batch_size", "grad_accum", "max_length", "save_steps", "save_total_limit", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'{name}' must be at least 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise ConfigError(f"'max_length' of {self.max_length} leaves no room for a prompt and a response")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"'max_steps' must be at least 1, got {self.max_steps}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"'limit' must be at least 1, got {self.limit}")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError("'epochs' and 'learning_rate' must be positive")
        for name in ("warmup_ratio",) + (("mix_ratio",) if self.mix_ratio is not None else ()):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"'{name}' must be between 0 and 1, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"'weight_decay' must be >= 0, got {self.weight_decay}")
        column_mapping(self.columns)
        self.check_lora_settings()
        if self.merge and self.method == "full":
            raise ConfigError("--merge applies to LoRA/QLoRA; full fine-tuning already writes full weights")
        self.check_system_prompt_settings()
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one")
        self.check_replay_settings()
        if self.padding_free and self.objective == "onpolicy":
            raise ConfigError("--padding-free applies to the sft objective; --objective onpolicy pads its own batches")
        onpolicy.validate(self)
        _check_tracker(self.report_to)


_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def _check_tracker(name: str) -> None:
    """The tracker's package is installed (found, not imported): else the Trainer fails after the model loads."""
    modules = _TRACKER_PACKAGES.get(name, ())
    if modules and not any(importlib.util.find_spec(m) for m in modules):
        raise ConfigError(f"--report-to {name} needs the {modules[0]} package: pip install {modules[0]}")
