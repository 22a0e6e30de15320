"""Replay: mix general examples into the task data so fine-tuning keeps rehearsing what it should not lose.

Two sources. ``data``: a general dataset's own responses (any shape ``sdft.base.data`` reads). ``seed``: the
seed model's greedy answers to that dataset's instructions -- replaying the model's own behaviour rather
than someone else's, which is the cheapest way to pull it back toward itself. Seed answers are generated
once per (model, file, decoding) into a cache under ``$SDFT_HOME/replay/`` with crash-safe progress, so a
second arm, a rerun or another ratio reuses them.

The mix is a plain function of the data and the seed: ``round(ratio * task examples)`` replay examples
picked by a seeded permutation that does not depend on the ratio (a larger ratio adds examples, it never
swaps them), kept in file order, then shuffled in with the task examples by the training batch order.
Everything chosen is recorded in ``train.json`` (``data.replay``).
"""

from __future__ import annotations

import hashlib
import json
import random
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from sdft import generation
from sdft.base.chat import render_prompt
from sdft.base.config import IF_SET, field, to_dict
from sdft.base.data import is_distilled, load_examples
from sdft.base.errors import ConfigError, SdftError
from sdft.base.keys import without_old_defaults
from sdft.base.provenance import file_sha256
from sdft.base.store import ProgressFile, sdft_home
from sdft.base.templates import DEFAULT_PROMPT, load_template
from sdft.models import resolve

# A replay answer cut at the token budget teaches the model to stop mid-sentence: dropped, and counted.
_DROP_FINISH = "length"


@dataclass
class ReplaySettings:
    """The replay settings of ``sdft train`` (and of ``sdft run``'s replay arms, through its train config),
    declared once with their checks; mixed into ``TrainConfig`` as ``sdft.generation.EngineSettings`` is
    into the generating stages (flat keys and flags, their own heading in ``--help``)."""

    section: ClassVar[str] = "replay"
    replay_data: str | None = field(None, "general dataset (any shape) whose examples are mixed into the "
                                          "training data: replay against forgetting")
    replay_ratio: float | None = field(None, "replay examples per task example (0.25 = one for every four)")
    replay_source: Literal["data", "seed"] = field(
        "data", "replay targets: the file's own responses, or the seed model's greedy answers to its "
                "instructions (generated once, cached in $SDFT_HOME/replay)")
    replay_max_new_tokens: int = field(256, "token budget of the seed's replay answers (answers cut by it are dropped)")
    replay_backend: str = field("hf", "backend generating the seed's replay answers (as --backend: auto, hf, vllm, "
                                "or 'module:Class')", keyed=IF_SET)
    replay_precision: Literal["auto", "fp32", "bf16"] = field(
        "auto", "precision of the seed's replay answers (as --precision)", keyed=IF_SET)

    def check_replay_settings(self) -> None:
        """Called by ``TrainConfig.validate``: one clear line for each contradiction."""
        if self.replay_data is None:
            if self.replay_ratio is not None or self.replay_source != "data":
                raise ConfigError("--replay-ratio and --replay-source need --replay-data (the general dataset to "
                                  "replay)")
            return
        ratio = self.replay_ratio
        if ratio is None or not 0 < ratio <= 10:
            raise ConfigError(f"'replay_ratio' must be above 0 and at most 10 (replay examples per task example, "
                              f"e.g. 0.25), got {ratio}")
        if self.replay_max_new_tokens < 1:
            raise ConfigError("'replay_max_new_tokens' must be at least 1")


def load(config) -> list:
    """The replay file's examples, every record validated now (before any model is loaded)."""
    examples = load_examples(config.replay_data, input_separator=config.input_separator)
    if any(is_distilled(ex) for ex in examples):
        raise ConfigError(f"{config.replay_data}: a distilled file cannot be the replay source; "
                          "give the general dataset itself")
    return examples


def choose(examples: list, n_task: int, ratio: float, seed: int) -> tuple[list, dict]:
    """``round(ratio * n_task)`` replay examples (all of them when the file has fewer), in file order."""
    wanted = round(ratio * n_task)
    order = list(range(len(examples)))
    random.Random(f"replay:{seed}").shuffle(order)
    picked = sorted(order[:wanted])
    chosen = [examples[i] for i in picked]
    info = {"ratio": ratio, "requested": wanted, "available": len(examples),
            "capped": wanted > len(examples),
            "ids_sha256": hashlib.sha256(json.dumps([ex.id for ex in chosen]).encode()).hexdigest()}
    return chosen, info


def seed_answers(config, examples: list, template, mode: str) -> dict[str, dict]:
    """``{example id: {text, finish_reason}}``: the seed's greedy answers, from the cache or generated now."""
    # The one resolver of every generating step; by default the transformers backend (any machine).
    setup = generation.backend_setup(generation.Engine(config.model, config.replay_backend, config.replay_precision))
    model_path = setup.model_path
    cache = cache_file(config, model_path, template, mode, setup.record)
    progress = ProgressFile(cache)
    pending = [ex for ex in examples if not progress.done(ex.id)]
    if pending:
        print(f"sdft train: the seed answers {len(pending)} replay instruction(s) (cached in {cache})", flush=True)
        backend = setup.load(None, progress=False)
        params = generation.GenerationParams(max_new_tokens=config.replay_max_new_tokens, temperature=0.0,
                                             batch_size=config.batch_size * 4)
        requests = [(render_prompt(template, ex, backend.tokenizer, mode, config.system_prompt, system=ex.system),
                     params) for ex in pending]
        groups = [i // params.batch_size for i in range(len(pending))]  # the batches a chunked loop would make

        def save(came: list) -> None:
            progress.append({"id": pending[i].id, "text": c.text.strip(), "finish_reason": c.finish_reason}
                            for i, c in came)

        # One stream where the backend keeps requests in flight (vLLM: every instruction at once instead of a few
        # batches' worth; greedy answers do not depend on the grouping); others batch by batch, each answer saved
        # as soon as its batch returns.
        answers = generation.stream(backend, requests, params.batch_size, groups)
        every_s = generation.SAVE_EVERY_S if generation.streams(backend) else 0.0
        with closing(generation.saved_as_they_come(answers, save, every_s=every_s)) as came:
            for _ in came:
                pass
        del backend
    return {ex.id: progress.records[ex.id] for ex in examples}


def cache_file(config, model_path: str, template, mode: str, engine: dict | None = None) -> Path:
    """One cache per seed model, replay file contents, prompt template, system prompt, decoding budget and
    engine (backend and precision as resolved)."""
    data = Path(config.replay_data)
    weights = Path(model_path) / "model.safetensors"
    key = {"model": str(model_path), "weights": _stamp(weights), "data": file_sha256(data) if data.is_file()
           else str(data), "template": to_dict(template), "mode": mode,
           "max_new_tokens": config.replay_max_new_tokens}
    key["system_prompt"] = config.system_prompt
    key["engine"] = {k: (engine or {}).get(k) for k in ("backend", "precision")}
    key = without_old_defaults("replay cache", key)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = sdft_home() / "replay"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{digest}.key.json").write_text(json.dumps(key, indent=2) + "\n")
    return folder / f"{digest}.jsonl"


def _stamp(path: Path):
    """Size and modification time: enough to tell re-converted weights apart without hashing gigabytes."""
    if not path.is_file():
        return None
    stat = path.stat()
    return [stat.st_size, int(stat.st_mtime)]


def replay_pairs(config, n_task: int, template, mode: str) -> tuple[list, dict]:
    """The replay examples for a run of ``n_task`` task examples, as ``(example, response)`` pairs, and
    the record that goes to ``train.json``."""
    examples = load(config)
    chosen, info = choose(examples, n_task, config.replay_ratio, config.seed)
    data = Path(config.replay_data)
    info.update(source=config.replay_source, path=str(data), template=template.name,
                sha256=file_sha256(data) if data.is_file() else None)  # what was replayed, not only where
    if config.replay_source == "data":
        pairs = [(ex, ex.response) for ex in chosen]
        info.update(examples=len(pairs), dropped_truncated=0)
        return pairs, info
    from accelerate import PartialState

    # cpu=True on CPUs: a bare PartialState() there sets up no process group under a multi-process launch.
    state = PartialState(cpu=resolve.default_device() == "cpu")
    with state.main_process_first():  # the main process generates; the others read its cache
        answers = seed_answers(config, chosen, template, mode)
    pairs = [(ex, answers[ex.id]["text"]) for ex in chosen
             if answers[ex.id]["finish_reason"] != _DROP_FINISH and answers[ex.id]["text"]]
    if chosen and not pairs:
        raise SdftError(f"every seed answer to the {len(chosen)} replay instruction(s) hit the "
                        f"{config.replay_max_new_tokens}-token budget or was empty; raise --replay-max-new-tokens")
    info.update(examples=len(pairs), dropped_truncated=len(chosen) - len(pairs),
                max_new_tokens=config.replay_max_new_tokens)
    return pairs, info


def train_pairs(config, n_task: int, mode: str) -> tuple[list, dict | None]:
    """``sdft train``'s replay examples as ``(example, response, rewritten=False)`` triples, with their
    ``train.json`` record (none without ``--replay-data``)."""
    if not config.replay_data:
        return [], None

    pairs, info = replay_pairs(config, n_task, load_template(DEFAULT_PROMPT["general"], "prompt"), mode)
    return [(ex, response, False) for ex, response in pairs], info
