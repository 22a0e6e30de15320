"""Generation backends: batched HF generation on the tiny random model, the FakeBackend test double, vLLM gating."""

import subprocess
import sys

import pytest

from sdft.base.errors import ConfigError, SdftError
from sdft.generation import Completion, GenerationParams, load_backend

QUESTIONS = ["What is 2 + 3?", "def add(a, b):", "x",
             "Below is an instruction that describes a task. Write a response that appropriately completes "
             "the request. Then explain the weather in Paris, unit C, step by step."]


@pytest.fixture(scope="module")
def backend(tiny_model):
    from sdft.generation.hf import HFBackend
    return HFBackend(str(tiny_model), progress=False)


@pytest.fixture(scope="module")
def prompts(backend):
    tok = backend.tokenizer
    return [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in QUESTIONS]


def test_batched_left_padding_matches_one_by_one_and_keeps_order(backend, prompts):
    params = GenerationParams(max_new_tokens=12, batch_size=3)  # uneven batches, lengths 10..40 tokens
    batched = backend.generate(prompts, params)
    single = [backend.generate([p], GenerationParams(max_new_tokens=12, batch_size=1))[0] for p in prompts]
    assert batched == single
    assert len({c.prompt_tokens for c in batched}) == len(prompts)  # really different lengths
    assert len({c.text for c in batched}) > 1
    assert all(isinstance(c, Completion) and c.completion_tokens == 12 for c in batched)
    assert backend.generate([], params) == []


def test_length_and_stop_string_finish_reasons(backend, prompts):
    full = backend.generate(prompts[:1], GenerationParams(max_new_tokens=16))[0]
    assert (full.finish_reason, full.completion_tokens) == ("length", 16)
    # A stop string taken from the middle of the greedy text: the same prefix, cut before it.
    stop = next(ch for ch in full.text[1:] if ch.isascii() and ch.isalpha())
    cut = backend.generate(prompts[:1], GenerationParams(max_new_tokens=16, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.index(stop)]
    assert cut.completion_tokens < 16


def test_eos_ends_a_row_and_is_counted(backend, prompts):
    steps = []

    def force_eos_at_third_step(module, args, output):
        steps.append(1)
        if len(steps) >= 3:
            output = output.clone()
            output[:, -1, backend.eos_ids[0]] = 1e4
        return output

    handle = backend.model.lm_head.register_forward_hook(force_eos_at_third_step)
    try:
        out = backend.generate(prompts[:2], GenerationParams(max_new_tokens=10, batch_size=2))
    finally:
        handle.remove()
    for completion in out:
        assert completion.finish_reason == "stop"
        assert completion.completion_tokens == 3  # two tokens of text + the EOS


def test_long_prompts_are_cut_from_the_left_and_reported(backend, prompts):
    with pytest.warns(UserWarning, match="cut from the left"):
        out = backend.generate(prompts, GenerationParams(max_new_tokens=4, max_prompt_tokens=12))
    lengths = [len(backend.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    for completion, n in zip(out, lengths):
        assert completion.prompt_truncated == (n > 12)
        assert completion.prompt_tokens == min(n, 12)


def test_encode_adds_bos_only_when_missing(backend):
    from sdft.generation.prompts import encode_prompts

    class BosTokenizer:  # a tokenizer that adds BOS (id 1, text "<s>") with special tokens
        bos_token_id, bos_token, eos_token_id = 1, "<s>", 2

        def __call__(self, text, add_special_tokens=True):
            def enc(t):
                ids = [1] if t.startswith("<s>") else []
                ids += [ord(c) for c in t.removeprefix("<s>")]
                return ([1] if add_special_tokens else []) + ids
            return {"input_ids": [enc(t) for t in text] if isinstance(text, list) else enc(text)}

    ids, cut = encode_prompts(BosTokenizer(), ["ab", "<s>ab", "abcdef"], max_prompt_tokens=4)
    assert ids == [[1, 97, 98], [1, 97, 98], [1, 100, 101, 102]]  # the long one keeps its BOS
    assert cut == [False, False, True]


def test_seeded_sampling_is_reproducible_and_batch_independent(backend, prompts):
    params = GenerationParams(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=7, batch_size=4)
    first = backend.generate(prompts, params)
    assert backend.generate(prompts, params) == first
    # Another batch size and order: each prompt still gets its own sample.
    one_by_one = backend.generate(prompts[::-1], GenerationParams(**{**params.__dict__, "batch_size": 1}))
    assert one_by_one[::-1] == first
    other_seed = backend.generate(prompts, GenerationParams(**{**params.__dict__, "seed": 8}))
    assert [c.text for c in other_seed] != [c.text for c in first]
    # Repeated copies of one prompt (pass@k) get different samples.
    copies = backend.generate([prompts[0]] * 3, params)
    assert len({c.text for c in copies}) > 1


def test_sampler_respects_top_k():
    import torch

    from sdft.generation.hf import SeededSampler

    scores = torch.tensor([[0.0, 1.0, 5.0, 4.0]] * 64)
    gens = [torch.Generator().manual_seed(i) for i in range(64)]
    picks = SeededSampler(gens, temperature=1.0, top_p=1.0, top_k=2)(None, scores).argmax(-1)
    assert set(picks.tolist()) == {2, 3}
    picks = SeededSampler(gens, temperature=1.0, top_p=0.5, top_k=0)(None, scores).argmax(-1)
    assert set(picks.tolist()) == {2}


def test_fake_backend_is_deterministic_and_applies_stop_and_length(tiny_model):
    from sdft.generation.fake import FakeBackend

    fake = FakeBackend(respond=lambda p: f"echo {p} ### tail")
    out = fake.generate(["a b", "c"], GenerationParams(stop=("###",)))
    assert [c.text for c in out] == ["echo a b ", "echo c "]
    assert all(c.finish_reason == "stop" for c in out)
    short = fake.generate(["a b c d"], GenerationParams(max_new_tokens=3))[0]
    assert (short.text, short.finish_reason, short.completion_tokens) == ("echo a b", "length", 3)
    assert fake.calls[0][0] == ["a b", "c"] and fake.tokenizer is None

    canned = FakeBackend(respond={"q": "The answer is 5."}, default="?")
    assert [c.text for c in canned.generate(["q", "other"], GenerationParams())] == ["The answer is 5.", "?"]
    with pytest.raises(ConfigError, match="no canned answer"):
        FakeBackend(respond={"q": "a"}).generate(["zzz"], GenerationParams())

    ready = Completion("fixed", 1, 1, "length")
    assert FakeBackend(respond=lambda p: ready).generate(["p"], GenerationParams()) == [ready]

    registered = load_backend("fake", model=str(tiny_model))  # default answers, tokenizer from the folder
    assert registered.tokenizer is not None and registered.tokenizer.chat_template
    again = registered.generate(["p", "p", "q"], GenerationParams())
    assert again[0] == again[1] and again[0].text != again[2].text


def test_vllm_backend_is_lazy_and_explains_when_missing():
    # A fresh interpreter: another test of this session may have imported vLLM for its own reasons.
    probe = subprocess.run([sys.executable, "-c", "import sys, sdft.generation.vllm_backend; print('vllm' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False"  # importing the module must not import vllm
    if __import__("importlib").util.find_spec("vllm") is None:
        with pytest.raises(SdftError, match="vllm"):
            load_backend("vllm", model="smollm2-135m-instruct")


def test_decoding_settings_give_one_calls_generation_params():
    from sdft.generation import DecodingSettings

    shared = DecodingSettings(temperature=0.7, seed=3)
    assert shared.generation_params(96) == GenerationParams(max_new_tokens=96, temperature=0.7, seed=3)
    assert shared.generation_params(96, temperature=0.0, stop=("\n",)).greedy  # one call's own values
    assert DecodingSettings(max_new_tokens=8).generation_params(96).max_new_tokens == 8  # the setting wins
    with pytest.raises(ConfigError, match="top_p"):
        DecodingSettings(top_p=0.0).check_decoding_settings()
