"""A TEST DOUBLE backend: canned, deterministic completions without loading any model.

For tests of the stages around generation (distillation filters, resume, evaluation scoring, the
pipeline), where a real model's output would be random noise or too slow. Not for real runs, so not in
``sdft.generation.BACKENDS``: the tests register it as ``fake`` (``tests/conftest.py``); elsewhere name it
``sdft.generation.fake:FakeBackend``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

from sdft.base.errors import ConfigError
from sdft.generation import Completion, GenerationParams
from sdft.models import resolve

Respond = Callable[[str], "str | Completion"] | Mapping[str, str]


def _local_model(model: str) -> bool:
    """A name whose tokenizer loads offline (a folder or an embedded alias); fake names are fine too."""
    return model in resolve.ALIASES or Path(model).is_dir()


def _default_respond(prompt: str) -> str:
    return f"Fake answer {hashlib.sha256(prompt.encode()).hexdigest()[:8]}."


class FakeBackend:
    """TEST DOUBLE: answers each prompt with ``respond(prompt)`` (a function or a mapping).

    ``respond`` may return text or a ready :class:`Completion`. Text goes through the same rules as a
    real backend: cut at the first stop string (finish ``stop``), cut to ``max_new_tokens`` tokens
    (finish ``length``). Tokens are the tokenizer's when one is given, whitespace words otherwise.
    ``tokenizer`` is a tokenizer object, a path to load one from, or None (then ``model``, when it is a
    local folder or an alias, supplies it; any other model name is just a label). Every call is recorded in ``calls`` as ``(prompts, params)``.
    """

    def __init__(self, model: str | None = None, adapter: str | None = None, *, respond: Respond | None = None,
                 tokenizer=None, default: str | None = None, progress: bool = True):
        self.model_name, self.adapter = model, adapter
        self.respond, self.default = respond or _default_respond, default
        self.calls: list[tuple[list[str], GenerationParams]] = []
        if isinstance(tokenizer, (str, Path)) or (tokenizer is None and model and _local_model(model)):
            tokenizer = resolve.load_tokenizer(str(tokenizer or model))
        self.tokenizer = tokenizer
        self.model = None

    def _answer(self, prompt: str) -> str | Completion:
        if isinstance(self.respond, Mapping):
            if prompt in self.respond:
                return self.respond[prompt]
            if self.default is not None:
                return self.default
            raise ConfigError(f"FakeBackend has no canned answer for prompt {prompt[:60]!r}")
        return self.respond(prompt)

    def _tokens(self, text: str) -> list:
        if self.tokenizer is not None:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text.split()

    def _detokenize(self, tokens: list) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.decode(tokens)
        return " ".join(tokens) if tokens else ""

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Completion]:
        self.calls.append((list(prompts), params))
        out = []
        for prompt in prompts:
            answer = self._answer(prompt)
            if isinstance(answer, Completion):
                out.append(answer)
                continue
            text, reason = str(answer), "stop"
            hits = [text.find(s) for s in params.stop if s and s in text]
            if hits:
                text = text[:min(hits)]
            tokens = self._tokens(text)
            if len(tokens) > params.max_new_tokens:  # the budget runs out before the stop string or EOS
                tokens, reason = tokens[:params.max_new_tokens], "length"
                text = self._detokenize(tokens)
            out.append(Completion(text=text, prompt_tokens=len(self._tokens(prompt)),
                                  completion_tokens=len(tokens), finish_reason=reason))
        return out
