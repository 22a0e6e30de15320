"""Prompts to token ids and per-prompt sampling seeds, the same for every backend (HF, vLLM, servers): one
encoding is what makes their answers comparable. No torch here, so the HTTP backend stays light."""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter


def row_seed(seed: int, prompt: str, occurrence: int) -> int:
    """A per-prompt seed; ``occurrence`` tells repeated copies of one prompt apart (pass@k sampling)."""
    digest = hashlib.sha256(f"{seed}\0{occurrence}\0{prompt}".encode()).hexdigest()
    return int(digest[:15], 16)


def row_seeds(prompts: list[str], seed: int) -> list[int]:
    seen: Counter[str] = Counter()
    seeds = []
    for prompt in prompts:
        seeds.append(row_seed(seed, prompt, seen[prompt]))
        seen[prompt] += 1
    return seeds


def encode_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int,
                   side: str = "left") -> tuple[list[list[int]], list[bool]]:
    """Token ids of rendered prompts, and whether each was cut (shared by the HF and vLLM backends).

    A chat template already wrote its special tokens into the text, so nothing is added again, except a
    BOS where the tokenizer would add one and the text does not start with it. A prompt longer than
    ``max_prompt_tokens`` is cut from the left (the instruction's end and the generation prompt matter
    most), keeping a leading BOS; ``side="right"`` keeps the first ``max_prompt_tokens`` instead, as the
    reference code did (losing the end of the prompt, "### Response:" included).
    """
    bos, bos_text = tokenizer.bos_token_id, tokenizer.bos_token or ""
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [bos] \
        and tokenizer("x", add_special_tokens=False)["input_ids"][:1] != [bos]
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    ids_list, truncated = [], []
    for prompt, ids in zip(prompts, encoded):
        ids = list(ids)
        if adds_bos and not (bos_text and prompt.startswith(bos_text)):
            ids.insert(0, bos)
        if not ids:  # an empty prompt: generation needs one token to start from
            ids = [bos if bos is not None else tokenizer.eos_token_id]
        cut = len(ids) > max_prompt_tokens
        if cut and side == "right":
            ids = ids[:max_prompt_tokens]
        elif cut:
            keep_bos = bos is not None and ids[0] == bos and max_prompt_tokens > 1
            ids = [ids[0]] + ids[len(ids) - max_prompt_tokens + 1:] if keep_bos else ids[-max_prompt_tokens:]
        ids_list.append(ids)
        truncated.append(cut)
    return ids_list, truncated


def warn_truncated(truncated: list[bool], max_prompt_tokens: int, side: str = "left") -> None:
    if any(truncated):
        warnings.warn(f"{sum(truncated)} of {len(truncated)} prompt(s) longer than max_prompt_tokens="
                      f"{max_prompt_tokens} were cut from the {side} (prompt_truncated=True)", stacklevel=3)
