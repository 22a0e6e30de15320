"""Training data for ``sdft train``: which examples, which target for each, in what order; and the run
folder: what to resume from, what --overwrite may remove, and the ``train.json`` / ``loss.png`` record.

Kept apart from the trainer so that every choice that changes results (the seeded subset, the mix of
rewrites and originals, the batch order) is a plain function of the data and the seed, testable without a
model.

Why we order the batches ourselves instead of using the Trainer's ``group_by_length`` sampler: that sampler
draws its permutation from the global torch RNG with no epoch seed, so after ``--resume`` into a later
epoch it would see different data than the uninterrupted run. Here every pass over the data is a seeded
permutation grouped by length, all passes are laid out in one list, and the Trainer reads it sequentially;
resuming then only has to skip the batches already done, which the Trainer does exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from sdft.base import hardware, layout
from sdft.base.config import to_dict
from sdft.base.data import is_distilled, offers_new_target, pick_response
from sdft.base.errors import ConfigError, SdftError
from sdft.base.layout import CHECKPOINTS, LOSS_PLOT, MERGED, RUN_GUARD, TRAIN_RECORD
from sdft.base.plotting import loss_plot
from sdft.base.provenance import run_record
from sdft.base.store import write_json
from sdft.base.templates import DEFAULT_SYSTEM_PROMPT, prompt_messages, render
from sdft.models.adapters import lora_shift
from sdft.train import turns
from sdft.train.onpolicy import cost
from sdft.train.speed import base_dtype

# A mega-batch is this many global micro-batches; lengths are sorted inside it. Big enough that batches
# hold similar lengths (little padding), small enough that the order stays random across the data.
MEGABATCH_BATCHES = 16
# Files a training run writes at the top of ``out`` (what --overwrite removes; nothing else is touched).
_OUTPUTS = (TRAIN_RECORD, LOSS_PLOT, "adapter_model.safetensors", "adapter_config.json", "model.safetensors",
            "model.safetensors.index.json", layout.MODEL_CARD)


@dataclass
class Target:
    """One training pair: prompt text, the response to learn, and whether that response is a rewrite."""

    id: str
    prompt: str
    response: str
    rewritten: bool
    replay: bool = False  # a replay example mixed in (sdft.train.replay), not one of the task's
    messages: list | None = None  # the prompt as chat messages (chat mode), for trainers that render it
    # A whole conversation (sdft.train.turns): its token ids and the mask of the assistant turns learned
    # (prompt + response is its text, the response starting at the first turn learned). None: one turn.
    input_ids: list[int] | None = None
    mask: list[int] | None = None
    turns_trained: int = 1


def rewrite_ids(accepted_ids: list[str], mix_ratio: float, seed: int) -> set[str]:
    """Which accepted rewrites to use: round(R * accepted) of them, picked by a seeded permutation.

    The permutation does not depend on R, so the rewritten set at R=0.25 is contained in the one at 0.5:
    a mix-ratio sweep changes one thing at a time.
    """
    order = sorted(accepted_ids)
    random.Random(f"mix:{seed}").shuffle(order)
    return set(order[:round(mix_ratio * len(order))])


def choose_targets(examples: list, mix_ratio: float | None, seed: int) -> tuple[list, dict]:
    """Pick each example's target response. Returns ``[(example, response, rewritten)]`` and counts.

    Original data: the response as given. Distilled data (records with an ``"sdft"`` block): among the
    records whose rewrite was accepted, a seeded share ``mix_ratio`` (default 1 = SDFT) learns the rewrite and
    the rest the original response (0 = vanilla fine-tuning on the same records).
    """
    distilled = [is_distilled(ex) for ex in examples]
    if any(distilled) and not all(distilled):
        raise ConfigError("the data mixes distilled records (with an 'sdft' block) and plain records; "
                          "train on the distilled.jsonl as written by 'sdft distill'")
    if not any(distilled):
        if mix_ratio is not None:
            raise ConfigError("--mix-ratio applies to a distilled dataset (distilled.jsonl from 'sdft distill'); "
                              "this data has no rewrites")
        pairs = [(ex, ex.response, False) for ex in examples]
        return pairs, {"distilled": False, "examples": len(pairs), "accepted": 0,
                       "rewritten": 0, "original": len(pairs), "mix_ratio": None}
    ratio = 1.0 if mix_ratio is None else mix_ratio
    accepted = [ex.id for ex in examples if offers_new_target(ex.source["sdft"])]
    use = rewrite_ids(accepted, ratio, seed)
    pairs = [(ex, pick_response(ex, ex.id in use), ex.id in use) for ex in examples]
    # The reference filter (--filter-mode paper) accepts an empty rewrite; the reference's training
    # preprocessing then skips the example. Do the same, and count it.
    kept = [p for p in pairs if p[1].strip()]
    rewritten = sum(1 for _, _, r in kept if r)
    counts = {"distilled": True, "examples": len(kept), "accepted": len(accepted), "rewritten": rewritten,
              "original": len(kept) - rewritten, "mix_ratio": ratio, "dropped_empty_rewrite": len(pairs) - len(kept)}
    if any("source" in ex.source["sdft"] for ex in examples):  # self-answer mode: "rewritten" = a new target
        counts["sources"] = {source: sum(r and ex.source["sdft"]["source"] == source for ex, _, r in kept)
                             for source in ("self", "rewrite")}
    return kept, counts


def strip_duplicate_bos(prompt: str, tokenizer) -> str:
    """Drop a BOS written by the chat template when the tokenizer adds its own (else it appears twice)."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or not prompt.startswith(bos):
        return prompt
    ids = tokenizer("x").input_ids
    return prompt[len(bos):] if ids and ids[0] == tokenizer.bos_token_id else prompt


def build_targets(pairs: list, template, tokenizer, mode: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                  replay: bool = False, loss_on: str = "all_turns") -> tuple[list[Target], int]:
    """Render each prompt with the task's training template; the completion is the response plus EOS.

    EOS is appended here, not left to TRL, so that the model learns to stop whatever the template mode.
    A record's own system text (alpaca ``system``, a sharegpt system turn) wins over ``system_prompt``.
    A conversation with several assistant turns (``loss_on`` all_turns, chat mode) or with tools is a
    whole-conversation target instead (:mod:`sdft.train.turns`); single-turn data never is.
    Returns the targets and how many prompts had to be moved to a token boundary (see ``on_token_boundary``).
    """
    eos = tokenizer.eos_token or ""
    targets, moved = [], 0
    for ex, response, rewritten in pairs:
        if turns.needs_turns(ex, loss_on, mode):
            text, spans = turns.conversation_target(ex, response, template, tokenizer, system_prompt, loss_on,
                                                    rewritten)
            stripped = strip_duplicate_bos(text, tokenizer)
            text, cut = stripped, len(text) - len(stripped)
            spans = [(start - cut, end - cut) for start, end in spans]
            ids, mask = turns.token_mask(text, spans, tokenizer, ex.location)
            targets.append(Target(f"replay:{ex.id}" if replay else ex.id, text[:spans[0][0]], text[spans[0][0]:],
                                  rewritten, replay, None, ids, mask, len(spans)))
            continue
        prompt = render(template, ex.instruction, tokenizer=tokenizer, mode=mode,
                        history=ex.history or None, system=ex.system, system_prompt=system_prompt)
        prompt, completion, shifted = on_token_boundary(strip_duplicate_bos(prompt, tokenizer), response + eos,
                                                        tokenizer)
        moved += shifted
        # As messages only where they render to exactly this prompt (an assistant prefix is not a message).
        messages = (prompt_messages(template, ex.instruction, history=ex.history or None, system=ex.system,
                                    system_prompt=system_prompt)
                    if mode == "chat" and not template.assistant_prefix else None)
        targets.append(Target(f"replay:{ex.id}" if replay else ex.id, prompt, completion, rewritten, replay,
                              messages))
    return targets, moved


def on_token_boundary(prompt: str, completion: str, tokenizer) -> tuple[str, str, bool]:
    """Split prompt + completion where the tokenized prompt is a prefix of the tokenized whole.

    The loss mask comes from tokenizing the prompt alone. A prompt ending in a space (Llama-2's
    ``[/INST] ``) meets a SentencePiece tokenizer that merges that space into the response's first word
    (``▁The``): masking by the prompt's token count would then hide the first response token, and the
    mask would disagree between TRL versions. Moving the trailing whitespace into the completion puts
    the boundary between tokens; the text trained on is unchanged. Returns (prompt, completion, moved).
    """
    def is_prefix(head: str) -> bool:
        ids = tokenizer(head).input_ids
        return tokenizer(prompt + completion).input_ids[:len(ids)] == ids

    if is_prefix(prompt):
        return prompt, completion, False
    trimmed = prompt.rstrip()
    if trimmed and trimmed != prompt and is_prefix(trimmed):
        return trimmed, prompt[len(trimmed):] + completion, True
    return prompt, completion, False


def token_lengths(targets: list[Target], tokenizer, max_length: int) -> tuple[list[int], list[int]]:
    """(prompt lengths, total lengths capped at max_length), tokenized the way TRL will tokenize them; for a
    whole conversation the prompt is what comes before its first learned token."""
    prompts = tokenizer([t.prompt for t in targets]).input_ids
    full = tokenizer([t.prompt + t.response for t in targets]).input_ids
    prompt_lens = [t.mask.index(1) if t.mask else len(p) for t, p in zip(targets, prompts)]
    return prompt_lens, [min(len(t.input_ids) if t.input_ids else len(f), max_length) for t, f in zip(targets, full)]


def total_steps(n_examples: int, epochs: float, max_steps: int | None, global_batch: int) -> int:
    if max_steps:
        return max_steps
    return max(1, math.ceil(epochs * n_examples / global_batch))


def batch_order(lengths: list[int], n_samples: int, micro_batch: int, seed: int) -> list[int]:
    """Indices for ``n_samples`` training samples: seeded passes over the data, grouped by length.

    ``micro_batch`` is the per-step batch of all processes together (per-device batch x processes); the
    Trainer hands consecutive per-device slices of it to the processes, so each micro-batch holds examples of
    similar length on every process. Micro-batches are then shuffled within the pass, so long and short
    ones are spread over training instead of forming a length curriculum.
    """
    n = len(lengths)
    order: list[int] = []
    rng = random.Random(f"order:{seed}")
    while len(order) < n_samples:
        perm = list(range(n))
        rng.shuffle(perm)
        groups = _micro_batches(perm, lengths, micro_batch)
        rng.shuffle(groups)
        order += [i for g in groups for i in g]
    return order[:n_samples]


def _micro_batches(perm: list[int], lengths: list[int], micro_batch: int) -> list[list[int]]:
    """``perm`` cut into micro-batches, sorted by length (longest first) inside each mega-batch."""
    mega = micro_batch * MEGABATCH_BATCHES
    groups = []
    for start in range(0, len(perm), mega):
        chunk = sorted(perm[start:start + mega], key=lambda i: -lengths[i])
        groups += [chunk[i:i + micro_batch] for i in range(0, len(chunk), micro_batch)]
    return groups


def common_order(ids: list[str], group_by: list[int], n_samples: int, micro_batch: int, seed: int) -> list[int]:
    """Like :func:`batch_order`, from what every arm at a seed shares: the example ids (each pass's permutation
    sorts them by a hash of seed, pass and id) and ``group_by`` (prompt lengths, or all 0: no grouping). Arms
    that train the same examples then get the same examples in every micro-batch whatever their targets.
    Without grouping, an example one arm lacks (an empty rewrite dropped) leaves the others in the same order."""
    order: list[int] = []
    rounds = 0
    while len(order) < n_samples:
        perm = sorted(range(len(ids)),
                      key=lambda i: hashlib.sha256(f"order:{seed}:{rounds}:{ids[i]}".encode()).digest())
        groups = _micro_batches(perm, group_by, micro_batch)
        if any(group_by):  # sorted by length inside mega-batches: shuffled, lest they form a curriculum
            random.Random(f"order:{seed}:{rounds}").shuffle(groups)
        order += [i for g in groups for i in g]
        rounds += 1
    return order[:n_samples]


def order_for(how: str, targets: list[Target], lengths: list[int], tokenizer, n_samples: int, micro_batch: int,
              seed: int) -> list[int]:
    """The batch order ``--batch-order`` asks for. ``length`` groups by prompt + target tokens (least padding,
    but each arm's targets differ, so arms at one seed see different batches and per-seed differences get
    noisier); ``prompt`` by prompt tokens alone and ``index`` by nothing: the same batches for every arm."""
    if how == "length":
        return batch_order(lengths, n_samples, micro_batch, seed)
    if how == "index":
        group_by = [0] * len(targets)
    else:  # rstrip: on_token_boundary moves a prompt's trailing whitespace depending on the completion
        group_by = [len(ids) for ids in tokenizer([t.prompt.rstrip() for t in targets]).input_ids]
    return common_order([t.id for t in targets], group_by, n_samples, micro_batch, seed)


def order_digest(targets: list[Target], order: list[int]) -> str:
    """SHA-256 of the example ids in training order: equal in two runs' train.json = the same batches."""
    return hashlib.sha256(json.dumps([targets[i].id for i in order]).encode()).hexdigest()


def padding_efficiency(lengths: list[int], order: list[int], batch: int) -> float:
    """Share of real tokens among all (padded) tokens the model sees with per-device batches of ``batch``."""
    real = padded = 0
    for start in range(0, len(order), batch):
        chunk = [lengths[i] for i in order[start:start + batch]]
        real += sum(chunk)
        padded += max(chunk) * len(chunk)
    return real / padded if padded else 1.0


# ------------------------------------------------------------------------------------- run folder state

def last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint. The Trainer writes ``trainer_state.json`` last, so a checkpoint cut
    short by ``kill -9`` lacks it (or has it torn) and is skipped in favour of the one before."""
    found = []
    for path in ckpt_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit():
            found.append((int(step), path))
    for step, path in sorted(found, reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("global_step") == step:
            return path
    return None


def resume_point(config, out: Path, run_key: dict) -> Path | None:
    """``run_key``: ``{"key": stage key, "settings": keyed settings}`` of this run."""
    """Decide from what is in ``out`` whether to resume, start fresh, or refuse (never clobber silently)."""
    ckpt_dir = out / CHECKPOINTS
    checkpoint = last_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    if config.overwrite:
        return None
    if checkpoint is None and (out / TRAIN_RECORD).exists():
        raise SdftError(f"{out} already holds a finished training run ({TRAIN_RECORD}); pass --overwrite to "
                        "train again into it, or choose another --out")
    if checkpoint is None:
        return None  # nothing to lose: a run killed before its first checkpoint just starts again
    if not config.resume:
        raise SdftError(f"{out} holds checkpoints of an unfinished run ({checkpoint.name}); pass --resume to "
                        "continue it, or --overwrite to start again")
    try:
        before = json.loads((ckpt_dir / RUN_GUARD).read_text())
    except (OSError, ValueError):
        before = None
    if before is not None and "key" not in before:  # a guard written before stage keys: never the same run
        before = {"key": "unkeyed", "settings": before.get("config", {})}
    layout.refuse_other_key(ckpt_dir / RUN_GUARD, before, run_key["key"], run_key["settings"])
    return checkpoint


def clean(out: Path, checkpoint: Path | None) -> None:
    """Main process, before training. Starting afresh (a new folder, --overwrite, or a run killed before its
    first checkpoint): remove the earlier run's checkpoints and our own output files, nothing else.
    Resuming: remove checkpoints newer than the one we resume from (torn by the kill)."""
    ckpt_dir = out / CHECKPOINTS
    if checkpoint is None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(out / MERGED, ignore_errors=True)
        shutil.rmtree(out / layout.TENSORBOARD, ignore_errors=True)  # the earlier run's curves
        for name in _OUTPUTS:
            (out / name).unlink(missing_ok=True)
        for shard in out.glob("model-*-of-*.safetensors"):
            shard.unlink()
        return
    keep = int(checkpoint.name.removeprefix("checkpoint-"))
    for path in ckpt_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and int(step) > keep:
            shutil.rmtree(path, ignore_errors=True)


def write_record(run) -> dict:
    """Write train.json and loss.png (main process only) and drop the checkpoints of the finished run.

    ``run`` is the ``sdft.train.stage.Run`` that trained."""
    import time

    config, state = run.config, run.trainer.state
    out = Path(config.out)
    per_step = [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate"),
                 "grad_norm": h.get("grad_norm"), "tokens": h.get("num_tokens")}
                for h in state.log_history if "loss" in h and "step" in h]
    global_batch = config.batch_size * config.grad_accum * run.world
    # This session only: after --resume, the steps before the checkpoint ran in another process.
    seconds = (run.progress.ended or time.perf_counter()) - (run.progress.began or time.perf_counter())
    summary = {
        "data": {"path": str(config.data), "sha256": run.data_sha, **run.counts},
        "template": {"name": run.template, "mode": run.mode, "system_prompt": run.system},
        "training": {"objective": config.objective, "steps": state.global_step, "planned_steps": run.steps,
                     "epochs": round(state.global_step * global_batch / len(run.lengths), 3),
                     "processes": run.world, "global_batch": global_batch, "precision": run.precision,
                     "base_weights_dtype": base_dtype(config.method, run.precision), "compiled": run.compiled,
                     "device": "cuda" if run.cuda else "cpu", **run.parameters,
                     "cpu_bf16_speedup": None if run.cuda else hardware.cpu_bf16_speedup(),
                     "batch_order": config.batch_order, "batch_order_sha256": order_digest(run.targets, run.order),
                     "resumed_from": run.checkpoint.name if run.checkpoint else None},
        "loss": per_step,
        "final_loss": per_step[-1]["loss"] if per_step else None,
        "throughput": {"train_tokens_per_s": run.progress.tokens / seconds if seconds > 0 else None,
                       "tokens_this_session": run.progress.tokens, "seconds_this_session": round(seconds, 3),
                       "padding_free": config.padding_free,
                       # With --padding-free nothing is padded; the figure says what padding would have cost.
                       "padding_efficiency": round(padding_efficiency(run.lengths, run.order, config.batch_size), 4)},
    }
    if config.objective == "onpolicy":
        summary["onpolicy"] = cost(state.log_history, config, global_batch)
    if config.method != "full":
        summary["parameter_shift_l2"] = lora_shift(out)["total"]
    summary["wall_time_s"] = round(time.time() - run.started, 2)
    summary["outputs"] = {"weights": str(out), "loss_plot": str(out / LOSS_PLOT),
                          "merged": str(out / MERGED) if config.merge else None}
    write_json(out / TRAIN_RECORD, run_record(to_dict(config), **summary))
    loss_plot({config.method: per_step}, out / LOSS_PLOT, title=f"{config.method} on {Path(config.data).name}")
    if not config.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    return summary
