"""Generation on OpenAI-compatible completions servers (vLLM, SGLang, TGI, llama.cpp): one or many.

``--backend openai --endpoint http://host:8000/v1[,http://host2:8000/v1...]``. Every prompt is one
``/completions`` request carrying its own seed (the HF backend's ``row_seed``), so a sample does not depend
on which server or batch it lands on; requests are spread round-robin over the endpoints, at most
``max_concurrency`` in flight per endpoint (a server batches what is in flight). An endpoint that keeps
failing mid-run (killed, crashed, hung) is dropped and its requests go to the others, without spending their
retries (``sdft.generation.fleet``). When the model is a local checkpoint (an alias or folder) its tokenizer
renders and truncates the prompts here and the server gets token ids, exactly what the in-process backends
feed their engines; otherwise it gets the text.

Failures: connection errors (a reply cut short among them), timeouts and HTTP 408/429/5xx are retried
with exponential backoff (on the next endpoint); anything else, a reply over ``max_reply_bytes``, or an
answer that is not a completion, stops the job with one line naming the endpoint. ``timeout`` is each
request's deadline (connect and every read together: a server that trickles bytes is cut there, not kept
waiting). Stages write progress after every chunk, so finished records survive. The API key comes only from an
environment variable (``SDFT_API_KEY``, else ``OPENAI_API_KEY``, or the one named by ``api_key_env``);
it is never a config value, so it never reaches a run record. The transport is ``sdft.base.endpoint``'s: with a
key, plain http only to loopback; redirects never followed (the key would follow them); URLs redacted.
"""

from __future__ import annotations

import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from sdft.base.endpoint import (
    MAX_REPLY_BYTES,
    ReplyTooLarge,
    Transient,
    check_url,
    redact,
    request_json,
    with_path,
    without_path,
)
from sdft.base.errors import ConfigError, SdftError
from sdft.generation import Completion, GenerationParams, cut_at_stop
from sdft.generation.fleet import Fleet
from sdft.generation.prompts import encode_prompts, row_seeds, warn_truncated
from sdft.models import resolve

API_KEY_ENVS = ("SDFT_API_KEY", "OPENAI_API_KEY")


class EndpointError(SdftError):
    """A request failed for good (after retries, or for a reason a retry cannot fix)."""


def base_urls(endpoints, with_key: bool) -> list[str]:
    """Validated base URLs (``.../v1``) from a list or comma-separated string."""
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints or [])
    urls = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not urls:
        raise ConfigError("--backend openai needs --endpoint URL (e.g. http://127.0.0.1:8000/v1)")
    # Paths are joined before a query string (``.../v1?api-version=1`` -> ``.../v1/completions?api-version=1``).
    return [without_path(check_url(url, has_key=with_key), "/completions") for url in urls]


class OpenAIBackend:
    """``generate(prompts, params)`` over OpenAI-compatible ``/completions`` endpoints.

    Options (``--backend-option KEY=VALUE``): ``max_concurrency`` (in flight per endpoint, default 32),
    ``timeout`` (seconds per request, the whole request: default 600), ``retries`` (default 4),
    ``backoff`` (first wait in seconds, default 1, doubling), ``max_reply_bytes`` (largest reply read,
    default 32 MiB), ``api_key_env`` (variable holding the key), ``served_model`` (the name to request
    when the server calls the model otherwise), ``tokenizer`` (folder or alias for token-id prompts when
    the model name is not local), ``request_chunk``.
    """

    loads_hf_weights = False
    forwarded_options = staticmethod(frozenset)  # none: **unknown is only there to refuse it in one line

    def __init__(self, model: str, adapter: str | None = None, progress: bool = True, endpoint=None,
                 max_concurrency: int = 32, timeout: float = 600.0, retries: int = 4, backoff: float = 1.0,
                 api_key_env: str | None = None, served_model: str | None = None, tokenizer: str | None = None,
                 request_chunk: int | None = None, max_reply_bytes: int = MAX_REPLY_BYTES, **unknown):
        self.check_options({**unknown, "endpoint": endpoint, "api_key_env": api_key_env})
        if unknown:
            raise ConfigError(f"unknown option(s) for the openai backend: {', '.join(sorted(unknown))}")
        if adapter:
            raise ConfigError("the openai backend cannot apply --adapter: serve it (vllm serve BASE --enable-lora "
                              "--lora-modules NAME=DIR) and pass --model NAME")
        self._key = self._api_key(api_key_env)
        self.endpoints = base_urls(endpoint, bool(self._key))
        self.model_name = served_model or model
        self.max_concurrency, self.timeout = max(1, int(max_concurrency)), float(timeout)
        self.retries, self.backoff, self.progress = max(0, int(retries)), float(backoff), progress
        self.max_reply_bytes = int(max_reply_bytes)
        if not (math.isfinite(self.timeout) and self.timeout > 0) or self.max_reply_bytes < 1:
            raise ConfigError("the openai backend's timeout must be a positive number of seconds and "
                              "max_reply_bytes at least 1")
        self.request_chunk = int(request_chunk or 4 * self.max_concurrency * len(self.endpoints))
        self.fleet = Fleet(self.endpoints, self.max_concurrency)
        self.tokenizer = self._tokenizer(tokenizer or model)
        self.model = None
        for url in self.endpoints:
            self._check_serves(url)

    @staticmethod
    def check_options(options: dict) -> None:
        """What is refused before a stage records its settings (``backend_setup`` calls this, so that a
        stage which never sends a request, e.g. log-likelihood tasks only, cannot write a key either)."""
        if "api_key" in options:
            raise ConfigError("an API key is never a setting (it would be written to run records): put it in "
                              f"the environment variable {options.get('api_key_env') or API_KEY_ENVS[0]}")
        base_urls(options.get("endpoint"), bool(OpenAIBackend._api_key(options.get("api_key_env"))))

    @staticmethod
    def _api_key(env_name: str | None) -> str | None:
        names = (env_name,) if env_name else API_KEY_ENVS
        return next((os.environ[n] for n in names if os.environ.get(n)), None)

    @staticmethod
    def _tokenizer(name: str):
        if name in resolve.ALIASES or Path(name).expanduser().is_dir():
            return resolve.load_tokenizer(name)
        return None  # a remote-only model: the server tokenizes the text

    # ------------------------------------------------------------------------------------------ HTTP
    def _call(self, url: str, body: dict | None = None) -> dict:
        try:
            return request_json(url, body, api_key=self._key, timeout=self.timeout, max_bytes=self.max_reply_bytes)
        except ReplyTooLarge as exc:
            raise EndpointError(f"{exc} (--backend-option max_reply_bytes=N raises the limit)") from None

    def _check_serves(self, base: str) -> None:
        """Fail now, with one line, when a server is down or does not serve the model."""
        try:
            listing = self._call(with_path(base, "/models"))
        except Transient as exc:
            raise EndpointError(f"{exc}; is the server running?") from None
        names = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)] \
            if isinstance(listing, dict) else []
        if names and self.model_name not in names:
            raise ConfigError(f"endpoint {redact(base)} serves {', '.join(map(str, names))}, not "
                              f"'{self.model_name}': start it with --served-model-name, or pass "
                              "--backend-option served_model=NAME")

    def _with_retries(self, body: dict) -> tuple[str, dict]:
        """The endpoint that answered and its reply; a retry moves on to the next live endpoint."""
        attempt, base = 0, None
        while True:
            with self.fleet.slot(after=base) as base:
                try:
                    reply = self._call(with_path(base, "/completions"), body)
                    self.fleet.succeeded(base)
                    return base, reply
                except Transient as exc:
                    error = str(exc)
                    if self.fleet.failed(base, error, retries_spent=attempt >= self.retries):
                        continue  # a dropped endpoint's failure is not this request's: no retry spent
            if attempt >= self.retries:
                raise EndpointError(f"request failed after {attempt + 1} attempt(s); the last: "
                                    f"{error}{self.fleet.dropped_note()}")
            time.sleep(random.uniform(0, self.backoff * 2 ** attempt))  # full jitter: retrying clients spread
            if not self.fleet.was_dropped(base):
                attempt += 1

    # ------------------------------------------------------------------------------------ generation
    def _body(self, prompt, seed: int, params: GenerationParams) -> dict:
        body = {"model": self.model_name, "prompt": prompt, "max_tokens": params.max_new_tokens, "n": 1,
                "temperature": 0.0 if params.greedy else params.temperature, "seed": seed}
        if not params.greedy:
            body["top_p"] = params.top_p
            if params.top_k > 0:
                body["top_k"] = params.top_k  # an extension (vLLM, SGLang, llama.cpp); OpenAI proper has none
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
        if self.tokenizer is not None:
            body["return_token_ids"] = True  # a vLLM extension: the text is then decoded as in-process
        return body

    def _one(self, prompt, seed: int, params: GenerationParams, prompt_len: int | None, cut: bool) -> Completion:
        base, reply = self._with_retries(self._body(prompt, seed, params))
        shown = redact(with_path(base, "/completions"))
        try:
            choice = reply["choices"][0]
            text, reason, usage = choice["text"], choice.get("finish_reason"), reply.get("usage") or {}
            completion_tokens = int(usage["completion_tokens"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise EndpointError(f"endpoint {shown} answered something that is not a completion: "
                                f"{str(reply)[:160]}") from None
        if reason not in ("stop", "length"):
            raise EndpointError(f"endpoint {shown} ended a completion with finish_reason {reason!r}")
        if self.tokenizer is not None and isinstance(choice.get("token_ids"), list):
            # Decoded as the in-process backends do (a character cut by the budget becomes U+FFFD there).
            text = cut_at_stop(self.tokenizer.decode(choice["token_ids"], skip_special_tokens=True), params.stop)[0]
        return Completion(text=text, prompt_tokens=prompt_len if prompt_len is not None else
                          int(usage.get("prompt_tokens", 0)), completion_tokens=completion_tokens,
                          finish_reason=reason, prompt_truncated=cut)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Completion]:
        from tqdm.auto import tqdm

        if not prompts:
            return []
        if self.tokenizer is not None:
            inputs, truncated = encode_prompts(self.tokenizer, prompts, params.max_prompt_tokens,
                                               params.truncation_side)
            warn_truncated(truncated, params.max_prompt_tokens, params.truncation_side)
            lengths = [len(ids) for ids in inputs]
        else:
            inputs, truncated, lengths = list(prompts), [False] * len(prompts), [None] * len(prompts)
        seeds = row_seeds(list(prompts), params.seed)
        results: list[Completion | None] = [None] * len(prompts)
        workers = self.max_concurrency * len(self.endpoints)
        with ThreadPoolExecutor(max_workers=min(workers, len(prompts))) as pool, \
                tqdm(total=len(prompts), unit="prompt", desc="generate", disable=not self.progress) as bar:
            futures = {pool.submit(self._one, inputs[i], seeds[i], params, lengths[i], truncated[i]): i
                       for i in range(len(prompts))}
            for future in as_completed(futures):
                if future.exception() is not None:
                    for other in futures:  # queued requests are dropped; in-flight ones end on their own
                        other.cancel()
                    raise future.exception()
                results[futures[future]] = future.result()
                bar.update(1)
        self.fleet.report_moved()
        return results  # type: ignore[return-value]
