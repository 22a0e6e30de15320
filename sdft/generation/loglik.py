"""Log-likelihood scoring of continuations: multiple-choice answers and "seed likelihood".

Tokenization follows lm-evaluation-harness so that our multiple-choice numbers are comparable with
published lm-eval scores: trailing whitespace of the context moves to the continuation, then
``encode(context + continuation)`` is split after ``len(encode(context))`` tokens. Encoding the pair as
one string keeps the tokenizer's merges at the boundary (encoding the continuation alone would give a
" Paris" token a different id than it gets in running text). No special tokens are added, as lm-eval does
for causal models; an empty context is replaced by the BOS (or EOS) token so the first continuation token
still has something to be predicted from.

Batches are left-padded with explicit position ids: every row then ends at the same position, so only the
last ``max continuation length`` logits need the language-model head (``logits_to_keep``), which is a
large share of the compute for small models with big vocabularies. Right padding is kept as an option
and gives the same numbers (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

Padding = Literal["left", "right"]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prefix_token(tokenizer) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to score an empty context with")


def encode_pair(tokenizer, context: str, continuation: str,
                move_space: bool = True) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens), split the way lm-evaluation-harness splits them.

    ``move_space=False`` keeps the context's trailing whitespace in the context: right for a chat prompt
    ending in "assistant\n", whose newline the model was given, not asked to produce.
    """
    n_spaces = len(context) - len(context.rstrip()) if move_space else 0
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not continuation:
        return _encode(tokenizer, context) or [_prefix_token(tokenizer)], []
    context_ids = _encode(tokenizer, context) if context else []
    if not context_ids:
        return [_prefix_token(tokenizer)], _encode(tokenizer, continuation)
    whole = _encode(tokenizer, context + continuation)
    if not move_space and whole[:len(context_ids)] != context_ids:
        # A merge across the boundary (prompt ending in a space): the prompt's tokens are what the model
        # was given, so score the continuation as tokens of its own after them.
        return context_ids, _encode(tokenizer, continuation)
    return context_ids, whole[len(context_ids):]


def _max_length(model, tokenizer) -> int:
    for value in (getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length):
        # tokenizers without a limit report a huge sentinel (1e30); ignore it.
        if isinstance(value, int) and 0 < value < 1_000_000:
            return value
    return 2048


def _forward(model, input_ids, attention_mask, position_ids, keep: int):
    """Logits of the last ``keep`` positions (all positions when the model lacks ``logits_to_keep``)."""
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    logits_to_keep=keep, use_cache=False)
    except TypeError:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False)
    return out.logits[:, -keep:] if keep else out.logits


def scoring_rows(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int,
                 move_space: bool = True) -> list[tuple[list[int], int]]:
    """Per pair, (window of tokens, number of scored tokens at its end): the same for every scorer."""
    rows = []
    for context, continuation in pairs:
        ctx, cont = encode_pair(tokenizer, context, continuation, move_space)
        tokens = (ctx + cont)[-(max_len + 1):]
        rows.append((tokens, min(len(cont), len(tokens) - 1)))
    return rows


def engine_sequence_logprobs(backend, pairs: Sequence[tuple[str, str]], move_space: bool = True,
                             progress: str | None = None) -> list[tuple[float, int]]:
    """:func:`sequence_logprobs` through a generation engine's prompt log-probabilities (a backend with
    ``prompt_logprobs(token lists)``, e.g. vLLM): one prefill per pair in the engine that already holds the
    model, instead of loading it again in torch. Same tokens, same windows; the numbers differ from a torch
    pass only by the kernels' rounding at the engine's precision."""
    rows = scoring_rows(backend.tokenizer, pairs, backend.max_model_len - 1, move_space)
    scored = [i for i, (_, n) in enumerate(rows) if n > 0]
    per_token = backend.prompt_logprobs([rows[i][0] for i in scored], progress=progress)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    for i, logprobs in zip(scored, per_token):
        n = rows[i][1]
        results[i] = (math.fsum(logprobs[-n:]), n)
    return results


def sequence_logprobs(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 8,
                      padding: Padding = "left", move_space: bool = True,
                      progress: str | None = None) -> list[tuple[float, int]]:
    """``(sum of log p(continuation tokens | context), number of continuation tokens)`` per pair.

    Pairs longer than the model's window keep their last tokens (lm-eval's left truncation); the token
    count then says how many continuation tokens were actually scored. ``move_space``: see
    :func:`encode_pair`. ``progress``: a progress bar with this label (scoring long answers with a
    0.5B model on a CPU takes many minutes).
    """
    import torch
    from tqdm.auto import tqdm

    rows = scoring_rows(tokenizer, pairs, _max_length(model, tokenizer), move_space)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    # Rows whose model input is identical share one forward pass: MMLU's " A".." D" are one token each
    # after the same context, so its four options cost one pass (lm-eval saves the same way).
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (tokens, n) in enumerate(rows):
        if n > 0:
            groups.setdefault(tuple(tokens[:-1]), []).append(i)
    # Longest first: similar lengths share a batch (less padding) and an out-of-memory shows up at once.
    order = sorted(groups.items(), key=lambda item: -len(item[0]))
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bar = tqdm(total=len(rows), desc=progress, unit="seq", disable=progress is None)
    with torch.inference_mode(), bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            # Each row is its window minus the last token: logits at position t predict token t + 1.
            width = max(len(inp) for inp, _ in batch)
            keep = max(rows[i][1] for _, members in batch for i in members) if padding == "left" else 0
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (inp, _) in enumerate(batch):
                span = slice(width - len(inp), width) if padding == "left" else slice(0, len(inp))
                ids[b, span] = torch.tensor(inp, dtype=torch.long)
                mask[b, span] = 1
            # Positions count real tokens only, so a left-padded row sees the same positions as unpadded.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = _forward(model, ids.to(device), mask.to(device), positions.to(device), keep)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for b, (inp, members) in enumerate(batch):
                end = logits.shape[1] if padding == "left" else len(inp)
                for i in members:
                    tokens, n = rows[i]
                    targets = torch.tensor(tokens[-n:], device=device)
                    picked = logprobs[b, end - n:end].gather(-1, targets[:, None]).squeeze(-1)
                    results[i] = (float(picked.sum()), n)
            bar.update(sum(len(members) for _, members in batch))
    return results


@dataclass
class Choice:
    """The outcome of one multiple-choice question."""

    index: int  # argmax of the summed log-likelihood (lm-eval "acc")
    index_norm: int  # argmax of log-likelihood per character of the choice (lm-eval "acc_norm")
    logprobs: list[float]
    n_tokens: list[int]


def _norm_length(continuation: str) -> int:
    # lm-eval divides by len(choice), the choice text without the " " target delimiter.
    return max(1, len(continuation[1:] if continuation.startswith(" ") else continuation))


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # first maximum, like numpy.argmax


def choose_many(model, tokenizer, items: Sequence[tuple[str | Sequence[str], Sequence[str]]],
                batch_size: int = 8) -> list[Choice]:
    """Score many questions at once (all their options share batches).

    Each item is ``(context, continuations)``; ``context`` may also be a list with one context per
    continuation (Winogrande's partial scoring puts the option in the context).
    """
    pairs: list[tuple[str, str]] = []
    spans: list[tuple[int, int]] = []
    for context, continuations in items:
        contexts = [context] * len(continuations) if isinstance(context, str) else list(context)
        if len(contexts) != len(continuations) or not continuations:
            raise ValueError(f"{len(contexts)} contexts for {len(continuations)} continuations")
        spans.append((len(pairs), len(pairs) + len(continuations)))
        pairs.extend(zip(contexts, continuations))
    scored = sequence_logprobs(model, tokenizer, pairs, batch_size=batch_size)
    out = []
    for (a, b), (_, continuations) in zip(spans, items):
        lps = [lp for lp, _ in scored[a:b]]
        normed = [lp / _norm_length(c) for lp, c in zip(lps, continuations)]
        out.append(Choice(_argmax(lps), _argmax(normed), lps, [n for _, n in scored[a:b]]))
    return out


def choose(model, tokenizer, context: str | Sequence[str], continuations: Sequence[str], *,
           normalize: bool = False, batch_size: int = 8) -> tuple[int, list[float]]:
    """Index of the most likely continuation (per character when ``normalize``, i.e. acc_norm) and
    the summed log-likelihood of each continuation."""
    choice = choose_many(model, tokenizer, [(context, continuations)], batch_size)[0]
    return (choice.index_norm if normalize else choice.index), choice.logprobs


def mean_token_nll(model, tokenizer, prompts: Sequence[str], texts: Sequence[str],
                   batch_size: int = 8) -> list[float]:
    """Mean negative log-likelihood per token (nats) of each text given its prompt; NaN for empty text.

    Prompts are rendered prompts as sent to the model (chat template included); their trailing
    whitespace stays in the prompt, so only the text's own tokens are scored.
    """
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
    scored = sequence_logprobs(model, tokenizer, list(zip(prompts, texts)), batch_size=batch_size,
                               move_space=False)
    return [-lp / n if n else math.nan for lp, n in scored]


def score_multiple_choice(model, tokenizer, task, examples: Sequence[dict],
                          batch_size: int = 8) -> list[dict]:
    """Generation-style records for a ``kind = "loglikelihood"`` task, one per example, in order.

    ``score`` is the task's headline metric (acc, or acc_norm when ``task.normalize``); both are kept,
    with the per-option log-likelihoods, so results can be re-aggregated without rerunning the model.
    """
    items = [task.choices(ex) for ex in examples]
    normalize = bool(getattr(task, "normalize", False))
    records = []
    for ex, (context, continuations), choice in zip(examples, items,
                                                     choose_many(model, tokenizer, items, batch_size)):
        picked = choice.index_norm if normalize else choice.index
        prompt = context if isinstance(context, str) else list(context)[picked]
        records.append({
            "id": ex["id"], "prompt": prompt, "completion": continuations[picked],
            "score": float(task.score(ex, picked)),
            "acc": float(task.score(ex, choice.index)), "acc_norm": float(task.score(ex, choice.index_norm)),
            "chosen": choice.index, "chosen_norm": choice.index_norm,
            "logprobs": choice.logprobs, "n_tokens": choice.n_tokens,
        })
    return records
