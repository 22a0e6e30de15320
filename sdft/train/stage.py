"""Stage 2 of SDFT: fine-tune the seed model on distilled (SDFT), original (vanilla) or mixed targets.

Everything but the targets is held equal between SDFT and vanilla runs, so the two can be compared: the
same prompt template family as distillation/evaluation, loss on the response tokens only (TRL's
prompt-completion datasets), EOS appended, the same seeded subset and batch order. TRL's ``SFTTrainer`` and
PEFT are used as libraries (built in ``sdft.train.setup``); what we add is the data selection
(``sdft.train.data``), a resumable run folder and a ``train.json`` record. Output, in ``out``:

* the LoRA adapter (``adapter_model.safetensors`` + ``adapter_config.json``) or full weights, with the
  tokenizer; ``merged/`` with ``--merge``;
* ``train.json``: config, data hash, rewritten/original counts, loss per step, tokens/s, wall time, versions;
* ``loss.png``; ``checkpoints/`` while training (removed at the end unless ``--keep-checkpoints``).

Multi-process: ``accelerate launch --num_processes N [--config_file configs/accelerate/...] -m sdft train``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from sdft.base import hub, layout
from sdft.base.config import column_mapping, keyed_settings, stage_key
from sdft.base.data import is_distilled, load_examples, seeded_subset
from sdft.base.errors import SdftError
from sdft.base.provenance import file_sha256
from sdft.base.templates import DEFAULT_PROMPT, describe_system, load_template, resolve_mode
from sdft.models import card, resolve
from sdft.train import data as train_data
from sdft.train import guards as train_guards
from sdft.train import prose, replay
from sdft.train.config import TrainConfig
from sdft.train.guards import interrupted  # noqa: F401  (the CLI's note after Ctrl-C)
from sdft.train.output import merge, summarize  # noqa: F401  (summarize: the CLI's)
from sdft.train.setup import (
    device,
    launched_processes,
    load_model,
    make_trainer,
    training_args,  # noqa: F401  (a public name of this module before the split)
)
from sdft.train.speed import compile_body, should_compile

# --------------------------------------------------------------------------------------------- training

@dataclass
class Run:
    """Everything ``prepare`` decided, handed to the training loop and to ``train.json``."""

    config: TrainConfig
    trainer: object
    progress: object
    targets: list
    lengths: list[int]
    order: list[int]
    steps: int
    counts: dict
    checkpoint: Path | None
    data_sha: str | None
    template: str
    mode: str
    precision: str
    cuda: bool
    started: float
    parameters: dict  # trainable and total, counted before a --merge folds the adapter away
    compiled: bool
    system: dict      # what the system slot held (templates.describe_system)

    @property
    def world(self) -> int:
        return self.trainer.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.trainer.accelerator.is_main_process


def prepare(config: TrainConfig) -> Run:
    """Check the run folder, pick and order the data, load the model, and build the SFTTrainer."""
    started = time.time()
    config.validate()
    hub.configure()  # TRL's trainer pings the hub unless telemetry is off
    out = Path(config.out)

    data_sha = _sha256(config.data)
    run_key = resume_key(config, data_sha)
    checkpoint = train_data.resume_point(config, out, run_key)  # refuse early, before importing torch
    cuda, precision = device(config)

    examples = load_examples(config.data, shape=config.shape, columns=column_mapping(config.columns),
                             input_separator=config.input_separator)
    examples = seeded_subset(examples, config.limit, config.seed)
    # On-policy distillation learns from the demonstrations themselves: on a distilled file, the originals.
    mix = 0.0 if config.objective == "onpolicy" and examples and is_distilled(examples[0]) else config.mix_ratio
    pairs, counts = train_data.choose_targets(examples, mix, config.seed)
    if config.prose_targets:
        pairs, counts["made_prose"] = prose.prose_pairs(pairs)

    template = load_template(config.template or DEFAULT_PROMPT[config.task], "prompt")
    mode = resolve_mode(config.template_mode, resolve.load_tokenizer(config.model))
    # Before the training model loads: the seed may have to answer the replay instructions first.
    replayed, counts["replay"] = replay.train_pairs(config, len(pairs), mode)

    train_guards.check_lora_targets(config)  # before the weights load
    model, tokenizer = load_model(config, precision)
    loss_on = turns_learned(config, pairs, mode)
    targets, moved = train_data.build_targets(pairs, template, tokenizer, mode, config.system_prompt,
                                              loss_on=loss_on)
    if replayed:
        replay_template = load_template(DEFAULT_PROMPT["general"], "prompt")
        more, moved_too = train_data.build_targets(replayed, replay_template, tokenizer, mode, config.system_prompt,
                                                   replay=True, loss_on=loss_on)
        targets, moved = targets + more, moved + moved_too
    counts["prompt_end_moved_to_token_boundary"] = moved
    prompt_lens, lengths = train_data.token_lengths(targets, tokenizer, config.max_length)
    # A prompt that fills max_length leaves no response token to learn from; TRL would drop it after
    # tokenizing, which would shift our batch order, so it is dropped (and counted) here instead.
    keep = [i for i, n in enumerate(prompt_lens) if n < config.max_length]
    if not keep:
        raise SdftError(f"every prompt is at least --max-length {config.max_length} tokens long, so no "
                        "response token is left to train on; raise --max-length")
    if len(keep) < len(prompt_lens):  # said now, not only in the summary at the end of a long run
        warnings.warn(f"{len(prompt_lens) - len(keep)} of {len(prompt_lens)} prompts are at least --max-length "
                      f"{config.max_length} tokens long and are left out of training; raise --max-length to keep "
                      "them", stacklevel=2)
    targets = [targets[i] for i in keep]
    lengths = [lengths[i] for i in keep]
    task = [t for t in targets if not t.replay]
    counts.update(loss_on=loss_on, conversations=sum(t.input_ids is not None for t in targets),
                  assistant_turns_trained=sum(t.turns_trained for t in targets))
    counts.update(examples=len(targets), dropped_too_long=len(prompt_lens) - len(keep), task_examples=len(task),
                  replay_examples=len(targets) - len(task), rewritten=sum(t.rewritten for t in task),
                  original=sum(not t.rewritten for t in task))

    world = launched_processes()
    global_batch = config.batch_size * config.grad_accum * world
    steps = train_data.total_steps(len(targets), config.epochs, config.max_steps, global_batch)
    order = train_data.order_for(config.batch_order, targets, lengths, tokenizer, steps * global_batch,
                                 config.batch_size * world, config.seed)
    trainer, progress = make_trainer(config, model, tokenizer, targets, order, steps, checkpoint, cuda, precision,
                                     run_key)
    if trainer.accelerator.num_processes != world:
        raise SdftError(f"the launcher reported {world} process(es) but {trainer.accelerator.num_processes} "
                        "joined training; launch with accelerate launch or torchrun")
    params = list(trainer.model.parameters())
    parameters = {"trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
                  "total_parameters": sum(p.numel() for p in params)}
    # auto never compiles for onpolicy: generating answers of every length would recompile the layers.
    setting = "off" if config.objective == "onpolicy" and config.compile == "auto" else config.compile
    compiled = (should_compile(setting, cuda, parameters["total_parameters"], steps * global_batch)
                and compile_body(trainer.model))
    return Run(config, trainer, progress, targets, lengths, order, steps, counts, checkpoint, data_sha,
               template.name, mode, precision, cuda, started, parameters, compiled,
               describe_system(config.system_prompt, tokenizer, mode, template))


def turns_learned(config: TrainConfig, pairs: list, mode: str) -> str:
    """Which assistant turns learn: ``--loss-on``, except where only the last can (on-policy distillation
    answers the last prompt; plain text marks no turns), said once when that leaves turns out."""
    several = sum(ex.assistant_turns() > 1 for ex, _, _ in pairs)
    if config.objective == "onpolicy":
        if any(ex.uses_tools for ex, _, _ in pairs):
            raise SdftError("--objective onpolicy does not take conversations with tool calls; use --objective sft")
        return "last_turn"
    if config.loss_on == "all_turns" and mode != "chat" and several:
        warnings.warn(f"{several} conversation(s) have several assistant turns, but plain-text prompts mark no "
                      "turns: only each one's last assistant turn is learned (--template-mode chat learns all)",
                      stacklevel=2)
        return "last_turn"
    return config.loss_on


def _sha256(path: str | None) -> str | None:
    return file_sha256(Path(path)) if path and Path(path).is_file() else None


def resume_key(config: TrainConfig, data_sha: str | None) -> dict:
    """``{"key", "settings"}`` that checkpoints must share to be resumed: the keyed settings and the contents
    of the data file and, with ``--replay-data``, of the replay file (added only then: earlier keys stay)."""
    inputs, settings = [data_sha], keyed_settings(config) | {"data_sha256": data_sha}
    if config.replay_data:
        inputs.append({"replay_sha256": _sha256(config.replay_data)})
        settings["replay_sha256"] = inputs[-1]["replay_sha256"]
    return {"key": stage_key(config, *inputs), "settings": settings}


def train(config: TrainConfig) -> dict:
    """Fine-tune ``config.model`` on ``config.data``; returns the summary also saved as ``train.json``."""
    run = prepare(config)
    trainer, out = run.trainer, Path(config.out)
    if run.is_main:
        where = (f"resuming from {run.checkpoint.name}" if run.checkpoint
                 else "no checkpoint to resume from, starting" if config.resume else "starting")
        print(f"sdft train: {config.method} on {len(run.targets)} examples, {run.steps} steps, {run.world} "
              f"process(es) on {'GPU' if run.cuda else 'CPU'} ({run.precision}); {where}", flush=True)
    trainer.train(resume_from_checkpoint=str(run.checkpoint) if run.checkpoint else None)
    train_guards.check_finite(trainer.model, config)
    trainer.save_model(str(out))
    result = {"main_process": run.is_main, "out": str(out), "method": config.method}
    if run.is_main:
        if config.merge:
            result["merged"] = merge(config, trainer.model, trainer.processing_class, out / layout.MERGED)
        result.update(train_data.write_record(run))
        card.refresh(out)  # README.md beside the adapter (and merged/): what huggingface-cli upload publishes
    trainer.accelerator.wait_for_everyone()  # no process exits while the main one still writes
    return result
