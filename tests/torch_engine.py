"""A test double of a generation engine's prompt log-probabilities (what ``sdft.generation.loglik``'s engine route
asks of vLLM), computed by one torch pass of a loaded model per token list."""

from __future__ import annotations


class TorchEngine:
    def __init__(self, model, tokenizer, max_model_len: int = 2048):
        self.model, self.tokenizer, self.max_model_len = model, tokenizer, max_model_len
        self.requests: list[list[int]] = []

    def prompt_logprobs(self, token_lists, progress=None):
        import torch

        self.requests += token_lists
        out = []
        with torch.inference_mode():
            for ids in token_lists:
                logits = self.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
                picked = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
                out.append(picked.tolist())
        return out
