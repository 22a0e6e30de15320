"""Decoding probes: how an answer opens, set by hand, to test whether the opening *causes* what follows.

A model fine-tuned on its own rewrites may open most answers with a numbered list and refuse less often; the
correlation alone cannot say whether the list opening is the cause. Two probes change only the opening and
let every later token be the model's greedy choice:

- ``answer_prefix``: the answer starts with this text. It is written after the generation prompt, the model
  continues it, and the task scores prefix plus continuation (forcing "1." on a seed that refuses in prose).
- ``forbid_opening``: the answer's first visible token may not match a regular expression. One 1-token pass
  bans every such token (and every whitespace-only token, so the ban cannot be stepped around by a leading
  newline) through the backend's logit bias; the chosen token is appended to the prompt and decoding then
  goes on without any ban. Under greedy decoding that is the argmax over the allowed first tokens, then the
  model's own continuation. The prompt and the first token are handed back to the backend as text, so the
  tokenizer may split their seam differently from the token it picked (rare; the answer text is the same).

Both run through ``backend.generate`` only, so every backend that honours ``GenerationParams.logit_bias``
(hf, vLLM, OpenAI-compatible servers) supports them.
"""

from __future__ import annotations

import dataclasses
import re

from sdft.base.errors import ConfigError, SdftError
from sdft.generation import Completion, GenerationParams

BAN = -100.0  # OpenAI's and vLLM's lowest logit bias (the hf backend makes it -inf): never the argmax in practice


def generate(backend, prompts: list[str], params: GenerationParams, answer_prefix: str | None,
             forbid_opening: str | None) -> list[Completion]:
    """``backend.generate(prompts, params)`` with the probe's opening; each completion's text starts with
    the prefix and counts the forced tokens' text as the answer's."""
    prefix = answer_prefix or ""
    prompts = [p + prefix for p in prompts]
    if not forbid_opening:
        return [_joined(prefix, c) for c in backend.generate(prompts, params)]
    banned = banned_tokens(backend.tokenizer, forbid_opening)
    first = backend.generate(prompts, dataclasses.replace(params, max_new_tokens=1, logit_bias=banned))
    _check_first(first, forbid_opening)
    out: list[Completion | None] = [None] * len(prompts)
    going = [i for i, c in enumerate(first) if c.finish_reason == "length" and params.max_new_tokens > 1]
    for i, c in enumerate(first):
        if i not in going:
            out[i] = _joined(prefix, c)
    rest = backend.generate([prompts[i] + first[i].text for i in going],
                            dataclasses.replace(params, max_new_tokens=params.max_new_tokens - 1)) if going else []
    for i, c in zip(going, rest):
        out[i] = Completion(text=prefix + first[i].text + c.text, prompt_tokens=first[i].prompt_tokens,
                            completion_tokens=1 + c.completion_tokens, finish_reason=c.finish_reason,
                            prompt_truncated=first[i].prompt_truncated or c.prompt_truncated)
    return out  # type: ignore[return-value]


def _check_first(first: list[Completion], pattern: str) -> None:
    """A first token the ban should have ruled out means the backend ignored the logit bias (a plug-in, a
    server that drops the field): stop, rather than store unprobed answers under the probe's key."""
    regex = re.compile(pattern)
    for c in first:
        if c.finish_reason == "length" and (not c.text.strip() or regex.match(c.text.lstrip())):
            raise SdftError(f"--forbid-opening {pattern!r}: the backend opened an answer with {c.text!r} although "
                            "that token was banned; it does not honour logit_bias, so this probe cannot run on it")


def _joined(prefix: str, c: Completion) -> Completion:
    return dataclasses.replace(c, text=prefix + c.text)


def banned_tokens(tokenizer, pattern: str) -> tuple[tuple[int, float], ...]:
    """Logit biases that ban every vocabulary token whose text, leading spaces removed, matches ``pattern``
    at its start, and every token whose text is blank: whitespace, or nothing at all when decoded alone
    (SentencePiece's lone "▁" and byte <0x20> on Llama-2-style tokenizers, which a numbered list opens with).
    Special tokens (EOS among them, and every added special token) stay allowed."""
    if tokenizer is None:
        raise ConfigError("--forbid-opening needs the model's tokenizer (this backend has none)")
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), pattern)
    if key not in _BANNED:  # decoding the vocabulary takes seconds; every batch of a task reuses it
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= {i for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                    if getattr(token, "special", False)}
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        regex = re.compile(pattern)
        _BANNED[key] = tuple((i, BAN) for i, text in enumerate(texts) if i not in special
                             and (not text.strip() or regex.match(text.lstrip())))
    return _BANNED[key]


_BANNED: dict[tuple, tuple[tuple[int, float], ...]] = {}
