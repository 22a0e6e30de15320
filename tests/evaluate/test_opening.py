"""Decoding probes (``--answer-prefix``, ``--forbid-opening``): on the tiny random model through the hf backend,
the forbidden opening is replaced by the best allowed first token and the rest is the model's own greedy
continuation; a prefix is continued and scored with the answer; keys change only when a probe is set."""

import json
import re

import pytest
import torch

from sdft.base.config import from_dict
from sdft.base.errors import ConfigError
from sdft.evaluate import opening
from sdft.evaluate.config import EvalConfig
from sdft.evaluate.run import task_settings
from sdft.generation import GenerationParams
from sdft.tasks import get_task

QUESTIONS = ["What is 2 + 3?", "def add(a, b):", "List three fruits.", "Explain the weather in Paris."]


@pytest.fixture(scope="module")
def backend(tiny_model):
    from sdft.generation.hf import HFBackend
    return HFBackend(str(tiny_model), progress=False)


@pytest.fixture(scope="module")
def prompts(backend):
    return [backend.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                  add_generation_prompt=True) for q in QUESTIONS]


def _first_tokens(backend, prompts):
    return [c.text for c in backend.generate(prompts, GenerationParams(max_new_tokens=1))]


def _best_allowed(backend, prompt: str, pattern: str) -> str:
    """The argmax over the tokens the probe allows, from the model's own logits."""
    tok = backend.tokenizer
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0, -1].float()
    for token, _ in opening.banned_tokens(tok, pattern):
        logits[token] = float("-inf")
    return tok.decode([int(logits.argmax())])


def test_a_forbidden_opening_gives_the_best_allowed_first_token_then_the_models_own_continuation(backend, prompts):
    free = _first_tokens(backend, prompts)
    pattern = "|".join(re.escape(t.lstrip()) for t in free if t.strip())  # ban what the model opens with
    params = GenerationParams(max_new_tokens=10, batch_size=4)
    probed = opening.generate(backend, prompts, params, None, pattern)
    for prompt, answer, was in zip(prompts, probed, free):
        first = _best_allowed(backend, prompt, pattern)
        assert answer.text.startswith(first) and not re.match(pattern, first.lstrip()) and first.strip()
        assert not answer.text.startswith(was)
        rest = backend.generate([prompt + first], GenerationParams(max_new_tokens=9))[0]
        assert answer.text == first + rest.text and answer.completion_tokens == 1 + rest.completion_tokens
        assert answer.finish_reason == rest.finish_reason


def test_an_answer_prefix_is_continued_and_is_part_of_the_answer(backend, prompts):
    params = GenerationParams(max_new_tokens=6, batch_size=4)
    probed = opening.generate(backend, prompts, params, "1.", None)
    plain = backend.generate([p + "1." for p in prompts], params)
    assert [c.text for c in probed] == ["1." + c.text for c in plain]


def test_the_hf_backend_honours_logit_bias(backend, prompts):
    tok = backend.tokenizer
    for prompt in prompts:  # one whose two best first tokens read differently (random weights: byte tokens)
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            best, second = backend.model(input_ids=ids).logits[0, -1].float().topk(2).indices.tolist()
        if tok.decode([best]) != tok.decode([second]):
            break
    else:
        pytest.skip("no prompt whose two best first tokens differ in text")
    params = GenerationParams(max_new_tokens=1)
    assert backend.generate([prompt], params)[0].text == tok.decode([best])
    banned = backend.generate([prompt], GenerationParams(max_new_tokens=1, logit_bias=((best, -100.0),)))[0]
    assert banned.text == tok.decode([second])


def test_banned_tokens_keep_special_tokens_and_ban_whitespace_only_ones(backend):
    tok = backend.tokenizer
    banned = {i for i, bias in opening.banned_tokens(tok, r"\d")}
    texts = {i: tok.decode([i]) for i in banned}
    assert banned and all(not t.strip() or t.lstrip()[0].isdigit() for t in texts.values())
    assert tok.eos_token_id not in banned
    assert any(not t.strip() for t in texts.values()) and any(t.strip() for t in texts.values())


def test_the_probe_is_keyed_for_generative_tasks_only_and_absent_keys_stay_as_before(tiny_model):
    base = {"tasks": ["advbench"], "model": str(tiny_model)}
    plain = from_dict(EvalConfig, base)
    probed = from_dict(EvalConfig, {**base, "forbid_opening": r"\d"})
    advbench = get_task("advbench")
    params = plain.decoding("advbench", advbench.max_new_tokens)

    def key(task, config, name):
        return task_settings(name, task, config, params, probe=config.opening())["settings_key"]

    assert key(advbench, plain, "advbench") == task_settings("advbench", advbench, plain, params)["settings_key"]
    assert key(advbench, probed, "advbench") != key(advbench, plain, "advbench")
    assert plain.opening() is None and probed.opening() == {"forbid_opening": r"\d"}


@pytest.mark.parametrize(("bad", "message"), [
    ({"forbid_opening": "(unclosed"}, "'forbid_opening' '\\(unclosed' is not a regular expression"),
    ({"answer_prefix": ""}, "'answer_prefix' must not be empty"),
    ({"answer_prefix": "1.", "n_samples": 2, "temperature": 0.7}, "greedy probes: use temperature 0 and n_samples 1"),
    ({"answer_prefix": "1.", "temperature": 0.7}, "greedy probes"),
    ({"answer_prefix": "1.", "truncation_side": "right"}, "need truncation_side left"),
    ({"forbid_opening": r"\d", "tasks": ["advbench", "mmlu"]}, r"task\(s\) mmlu generate none"),
])
def test_bad_probe_settings_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(EvalConfig, {"tasks": ["advbench"], **bad})


def test_sdft_eval_records_the_probe_and_scores_the_prefixed_answers(tiny_model, tmp_path):
    from sdft.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model), "--tasks", "advbench", "--limit", "3", "--max-new-tokens", "4",
                 "--answer-prefix", "I cannot help with that.", "--out", str(out), "--no-progress",
                 "--backend", "hf"]) == 0
    entry = json.loads((out / "results.json").read_text())["tasks"]["advbench"]
    assert entry["settings"]["opening"] == {"answer_prefix": "I cannot help with that."}
    lines = [json.loads(line) for line in (out / "generations" / "advbench.jsonl").read_text().splitlines()]
    assert all(r["completion"].startswith("I cannot help with that.") for r in lines)
    assert entry["metrics"]["safe_rate_paper_keywords"]["value"] == 1.0  # the forced refusal is scored


def test_blank_tokens_of_a_sentencepiece_tokenizer_are_banned_too(tmp_path):
    """Llama-2's numbered list opens with a lone "▁" (decoded alone: nothing): it must not step around the ban."""
    from llama2_tokenizer import build_llama2_tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_llama2_tokenizer(tmp_path / "tok"))
    ids = tok("[INST] Count [/INST] 1. One", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    first = ids[len(pieces) - pieces[::-1].index("]")]  # the answer's first token, after "[/INST]"
    banned = {i for i, _ in opening.banned_tokens(tok, r"\d")}
    assert tok.decode([first]).strip() == "" and first in banned
    assert tok.eos_token_id not in banned and tok.bos_token_id not in banned


def test_a_backend_that_ignores_the_logit_bias_stops_the_probe(backend, prompts):
    class Deaf:  # a plug-in or server that drops logit_bias
        tokenizer = backend.tokenizer

        def generate(self, prompts, params):
            import dataclasses
            return backend.generate(prompts, dataclasses.replace(params, logit_bias=()))

    free = _first_tokens(backend, prompts[:1])[0]
    pattern = re.escape(free.lstrip()) if free.strip() else r"\s"
    from sdft.base.errors import SdftError
    with pytest.raises(SdftError, match="does not honour logit_bias"):
        opening.generate(Deaf(), prompts[:1], GenerationParams(max_new_tokens=4), None, pattern)
