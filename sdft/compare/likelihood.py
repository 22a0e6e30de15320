"""Seed likelihood: the per-token NLL, under a model, of the seed's own answers to the same prompts (``sdft
analyze``, paper §5). Scored by a torch pass (``hf``) or by the engine's prompt log-probabilities (``vllm``), kept
in this process and on disk beside the reference's answers: ``sdft run`` compares every trained model with the
same seed answers, whose baseline under the seed is the same each time."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

from sdft import generation
from sdft.base import layout
from sdft.base.provenance import folder_stamp
from sdft.base.store import write_json
from sdft.compare.common import choose_tasks, distribution, eval_dir, match, read_results, setting
from sdft.compare.config import AnalyzeConfig
from sdft.generation import auto
from sdft.generation.loglik import engine_sequence_logprobs, sequence_logprobs
from sdft.models import resolve


def seed_likelihood(model, tokenizer, prompts: Sequence[str], texts: Sequence[str],
                    batch_size: int = 8, progress: str | None = None, engine=None) -> dict:
    """Per-token NLL (nats) of ``texts`` given ``prompts`` under a loaded model (a torch ``model`` and its
    ``tokenizer``, or a generation ``engine`` with prompt log-probabilities).

    ``mean_nll`` averages the per-answer means (each answer counts once); ``token_nll`` pools all tokens
    (long answers weigh more) and ``perplexity`` is its exponential. Empty texts are left out.
    """
    pairs = list(zip(prompts, texts))
    # move_space=False: the prompt's final newline was given, not generated.
    if engine is not None:
        scored = engine_sequence_logprobs(engine, pairs, move_space=False, progress=progress)
    else:
        scored = sequence_logprobs(model, tokenizer, pairs, batch_size=batch_size, move_space=False,
                                   progress=progress)
    per_item = [-lp / n if n else math.nan for lp, n in scored]
    tokens = sum(n for _, n in scored)
    token_nll = -sum(lp for lp, _ in scored) / tokens if tokens else None
    dist = distribution(per_item)
    return dist | {"mean_nll": dist["mean"], "token_nll": token_nll, "tokens": tokens,
                   "perplexity": math.exp(token_nll) if token_nll is not None else None,
                   "n_empty": sum(1 for _, n in scored if n == 0)}


# Scores already computed in this process. `sdft run` compares every trained model with the same seed
# answers, and their baseline (the seed's own score) is the same each time: a full pass of the model
# (10 minutes for 200 answers of the 0.5B seed here). They are also kept on disk beside the answers, so a
# resumed run or the next session does not pay it again.
_SCORED: dict[tuple, dict] = {}


def _digest(prompts: Sequence[str], texts: Sequence[str]) -> str:
    import hashlib
    return hashlib.sha256(json.dumps([list(prompts), list(texts)]).encode()).hexdigest()


def _fingerprint(path: str | None, skip: tuple[str, ...] = ()):
    """A model or adapter folder as its files' names, sizes and times: retrained in place, it scores anew."""
    if not path or not os.path.isdir(path):
        return path
    return path, tuple(folder_stamp(path, skip=skip))


def seed_likelihood_stage(config: AnalyzeConfig, ref_results: dict, cand_results: dict,
                           matched: dict, result: dict) -> dict:
    """Seed answers scored under the candidate model and (baseline) under the reference model."""
    model = config.model or setting(cand_results, "model")
    adapter = config.adapter if (config.model or config.adapter) else setting(cand_results, "adapter")
    if not model:
        return {"skipped": "no candidate model: give --model (and --adapter), or compare eval folders "
                           "whose results.json records the model"}
    answers = _answers(matched)

    def score(name: str, lora: str | None) -> dict:
        return _scored(config, name, lora, *answers)

    cand = score(model, adapter)
    out = {"model": model, "adapter": adapter, **_split_nll(cand, matched)}
    ref_model, ref_adapter = setting(ref_results, "model"), setting(ref_results, "adapter")
    if config.baseline and not ref_model and config.model:
        ref_model = config.model  # the usual case: the seed is the base model the adapter was trained on
        result["notes"].append(f"the reference results.json names no model; baseline scored under "
                               f"{config.model} without adapter")
    if config.baseline and ref_model:
        same = (ref_model, ref_adapter) == (model, adapter)
        base = cand if same else score(ref_model, ref_adapter)
        out["reference"] = {"model": ref_model, "adapter": ref_adapter, **_split_nll(base, matched)}
        if out["mean_nll"] is not None and out["reference"]["mean_nll"] is not None:
            out["delta"] = out["mean_nll"] - out["reference"]["mean_nll"]
    elif config.baseline:
        result["notes"].append("no baseline seed likelihood: the reference results.json names no model")
    return out


def _answers(matched: dict) -> tuple[list[str], list[str]]:
    """(prompts, answers) of the reference's matched items, in task then item order."""
    return ([r["prompt"] for m in matched.values() for r in m.reference],
            [r.get("completion") or "" for m in matched.values() for r in m.reference])


def _scored(config: AnalyzeConfig, name: str, lora: str | None, prompts: list, texts: list) -> dict:
    """The answers scored under one model: from this process, from the reference folder's disk cache, or now."""
    # An adapter's model card is left out: sdft run rewrites it with the results, no weight changes.
    key = (_fingerprint(name), _fingerprint(lora, skip=(layout.MODEL_CARD,)), config.batch_size,
           _digest(prompts, texts), *_scorer_key(config))
    if key not in _SCORED:
        saved = layout.nll_scores_file(Path(config.reference), _digest([json.dumps(key)], []))
        if saved.is_file():
            _SCORED[key] = json.loads(saved.read_text())
        else:
            _SCORED[key] = _score_answers(config, name, lora, prompts, texts)
            write_json(saved, _SCORED[key])
    return _SCORED[key]


def score_baseline(config: AnalyzeConfig) -> dict | None:
    """The reference's answers scored under the reference model (its results.json's, else ``config.model``):
    the baseline of every later comparison with that reference, cached beside its answers. ``sdft run`` calls
    it right after the seed's evaluation, while an engine scorer's engine still holds the seed."""
    reference = eval_dir(config.reference, "reference")
    results = read_results(reference)
    tasks, _ = choose_tasks(reference, reference, config.tasks)
    model = setting(results, "model") or config.model
    if not model or not tasks:
        return None
    matched = {task: match(reference, reference, task) for task in tasks}
    return _scored(config, model, setting(results, "adapter"), *_answers(matched))


def _scorer_key(config: AnalyzeConfig) -> tuple:
    """The scorer in the cache key; the torch pass adds nothing (its scores were cached before there was a
    choice)."""
    if config.likelihood_backend == "hf":
        return ()

    # The precision as resolved: "auto" on CPUs of two kinds must not share scores made in two precisions.
    precision = auto.generation_precision(config.likelihood_precision, config.likelihood_backend)
    return config.likelihood_backend, precision, tuple(sorted(config.likelihood_backend_option))


def _score_answers(config: AnalyzeConfig, name: str, lora: str | None, prompts: list, texts: list) -> dict:
    label = f"seed answers NLL under {Path(lora or name).name}"
    if config.likelihood_backend == "vllm":
        engine = generation.Engine(model=name, backend="vllm", precision=config.likelihood_precision,
                                   backend_option=tuple(config.likelihood_backend_option))
        setup = generation.backend_setup(engine)
        scored = seed_likelihood(None, None, prompts, texts, progress=label, engine=setup.load(lora, progress=False))
        return scored | {"scorer": {"backend": "vllm", "precision": setup.record["precision"]}}
    net, tokenizer = resolve.load_model_and_tokenizer(name, lora)
    return seed_likelihood(net, tokenizer, prompts, texts, batch_size=config.batch_size, progress=label)


def _split_nll(scored: dict, matched: dict) -> dict:
    """Pooled seed-likelihood numbers plus a per-task breakdown of the per-item values."""
    values, start, per_task = scored["values"], 0, {}
    for task, m in matched.items():
        per_task[task] = distribution(values[start:start + len(m.ids)])
        start += len(m.ids)
    return scored | {"tasks": per_task}


