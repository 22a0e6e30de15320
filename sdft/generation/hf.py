"""Batched generation with transformers: the default backend, and the one that runs on a CPU.

Why it is fast: prompts are sorted by token length and generated in left-padded batches (the paper's code
decodes one prompt at a time), so each forward pass does ``batch_size`` rows of work for roughly the cost
of one on a memory-bound CPU. Why it is reproducible: greedy decoding needs nothing, and sampling draws
each prompt's tokens from its own generator seeded by (seed, prompt, occurrence), so a prompt gets the
same sample whatever batch it lands in -- a resumed run regenerates exactly what a full run would have.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from sdft.generation import Completion, GenerationParams, cut_at_stop
from sdft.generation.prompts import encode_prompts, row_seeds, warn_truncated
from sdft.models import resolve


class SeededSampler(LogitsProcessor):
    """Temperature / top-k / top-p sampling with one torch generator per row.

    transformers samples a whole batch from the global RNG, which ties a prompt's sample to its batch
    mates. Instead this processor draws each row's token itself and returns scores that are -inf
    everywhere but the drawn token, so generate() runs in greedy mode and simply takes it.
    """

    def __init__(self, generators: list[torch.Generator], temperature: float, top_p: float, top_k: int):
        self.generators, self.temperature, self.top_p, self.top_k = generators, temperature, top_p, top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature
        if self.top_k > 0:
            kth = torch.topk(scores, min(self.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            probs = sorted_scores.softmax(dim=-1)
            # Drop a token when the mass before it already reaches top_p (the top token always stays).
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= self.top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        probs = scores.softmax(dim=-1)
        picks = torch.cat([torch.multinomial(probs[i], 1, generator=gen)
                           for i, gen in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picks), device=out.device), picks] = 0.0
        return out


def _token_ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class HFBackend:
    """``generate(prompts, params)`` on a transformers causal LM, optionally with a merged LoRA adapter.

    ``tokenizer`` and ``model`` are public: the distillation stage renders chat templates with the
    tokenizer. Prompts must already be rendered; special tokens are not added a second time.
    """

    loads_hf_weights = True

    def __init__(self, model: str, adapter: str | None = None, device: str | None = None, dtype=None,
                 progress: bool = True, precision: str | None = None):
        if dtype is None and precision in ("fp32", "bf16", "fp16"):
            dtype = precision
        self.model, self.tokenizer = resolve.load_model_and_tokenizer(model, adapter, dtype=dtype, device=device)
        self.tokenizer.padding_side = "left"
        self.progress = progress
        tok, config = self.tokenizer, self.model.generation_config
        # End of generation: the checkpoint's EOS ids (chat models often list several) plus the tokenizer's.
        self.eos_ids = list(dict.fromkeys(_token_ids(config.eos_token_id) + _token_ids(tok.eos_token_id)))
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_ids[0]
        self.bos_id = tok.bos_token_id
        # A clean config: a checkpoint's own sampling defaults (temperature, top_p...) must not leak in.
        self.model.generation_config = GenerationConfig(
            bos_token_id=self.bos_id, eos_token_id=self.eos_ids, pad_token_id=self.pad_id)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Completion]:
        from tqdm.auto import tqdm

        if not prompts:
            return []
        ids_list, truncated = encode_prompts(self.tokenizer, prompts, params.max_prompt_tokens,
                                             params.truncation_side)
        warn_truncated(truncated, params.max_prompt_tokens, params.truncation_side)
        seeds = row_seeds(list(prompts), params.seed)
        # Longest first: similar lengths share a batch (little padding) and memory peaks show up at once.
        order = sorted(range(len(prompts)), key=lambda i: -len(ids_list[i]))
        results: list[Completion | None] = [None] * len(prompts)
        size = max(1, params.batch_size)
        with tqdm(total=len(prompts), unit="prompt", desc="generate", disable=not self.progress) as bar:
            for start in range(0, len(order), size):
                batch = order[start:start + size]
                rows = self._generate_batch([ids_list[i] for i in batch], [seeds[i] for i in batch], params)
                for i, (text, n_new, reason) in zip(batch, rows):
                    results[i] = Completion(text=text, prompt_tokens=len(ids_list[i]), completion_tokens=n_new,
                                            finish_reason=reason, prompt_truncated=truncated[i])
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    def _generate_batch(self, batch_ids: list[list[int]], seeds: list[int],
                        params: GenerationParams) -> list[tuple[str, int, str]]:
        device = self.model.device
        width = max(len(ids) for ids in batch_ids)
        input_ids = torch.full((len(batch_ids), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for row, ids in enumerate(batch_ids):  # left padding: every row's last prompt token is aligned
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        config = GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=False,
                                  bos_token_id=self.bos_id, eos_token_id=self.eos_ids,
                                  pad_token_id=self.pad_id, stop_strings=list(params.stop) or None,
                                  sequence_bias={(token,): _bias(b) for token, b in params.logit_bias} or None)
        processors = LogitsProcessorList()
        if not params.greedy:
            generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
            processors.append(SeededSampler(generators, params.temperature, params.top_p, params.top_k))
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                      generation_config=config, logits_processor=processors,
                                      tokenizer=self.tokenizer if params.stop else None)
        new_tokens = out[:, width:].tolist()
        return [self._finish(row, params) for row in new_tokens]

    def _finish(self, tokens: list[int], params: GenerationParams) -> tuple[str, int, str]:
        """Text, generated token count and finish reason of one row of generate()'s output."""
        # A row ends at its first EOS; after a stop string generate() pads the row, so a pad ends it too.
        enders = set(self.eos_ids) | {self.pad_id}
        end = next((k for k, t in enumerate(tokens) if t in enders), None)
        if end is not None:
            count = end + 1 if tokens[end] in self.eos_ids else end
            text, reason = self.tokenizer.decode(tokens[:end], skip_special_tokens=True), "stop"
        else:
            count = len(tokens)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            reason = "length" if count >= params.max_new_tokens else "stop"
        text, hit = cut_at_stop(text, params.stop)
        return text, count, "stop" if hit else reason


def _bias(value: float) -> float:
    """OpenAI's lowest logit bias (-100) bans the token; an additive -100 here might not, so it is -inf."""
    return float("-inf") if value <= -100 else value
