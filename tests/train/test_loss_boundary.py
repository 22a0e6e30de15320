"""Loss masking at the prompt/response boundary, with real tokenizers.

Training masks the prompt by tokenizing it alone (TRL). If the prompt's last token merges with the
response's first one (SentencePiece: "[/INST] " + "The" -> "]", "▁The"), masking by the prompt's token
count hides the response's first token. ``train_data.build_targets`` ends every prompt on a token
boundary; these tests pin that the trained tokens are exactly the response + EOS, for a Llama-2-style
SentencePiece tokenizer, SmolLM2's and Qwen2.5's (byte-level BPE), in every template layout we ship.
"""

import os
from pathlib import Path

import pytest

from sdft.base import templates
from sdft.base.data import Example
from sdft.train.data import build_targets

RESPONSE = "The answer is 5."
LAYOUTS = [("math", "plain"), ("paper_math", "plain"), ("alpaca", "plain"), ("math", "chat")]
QWEN = Path(os.environ.get("SDFT_QWEN_DIR", "/work/models/qwen2.5-coder-0.5b-instruct"))


def trained_text(tokenizer, template_name: str, mode: str) -> tuple[str, int, list[int]]:
    """(text of the tokens that carry loss, prompts moved, ids of the trained tokens) for one example."""
    pair = (Example("x", "Tom has 2 apples and buys 3. How many?", RESPONSE), RESPONSE, False)
    (target,), moved = build_targets([pair], templates.PROMPT_TEMPLATES[template_name], tokenizer, mode)
    prompt_ids = tokenizer(target.prompt).input_ids
    full_ids = tokenizer(target.prompt + target.response).input_ids
    assert full_ids[:len(prompt_ids)] == prompt_ids, "the prompt's tokens must be a prefix of the whole"
    trained = full_ids[len(prompt_ids):]  # exactly what masking by the prompt's token count trains on
    return tokenizer.decode(trained), moved, trained


def check_layouts(tokenizer):
    for name, mode in LAYOUTS:
        if mode == "chat" and not tokenizer.chat_template:
            continue
        text, _, _ = trained_text(tokenizer, name, mode)
        assert text.strip() == RESPONSE + tokenizer.eos_token, (name, mode, text)


@pytest.fixture(scope="module")
def llama2_tokenizer(tmp_path_factory):
    pytest.importorskip("sentencepiece", reason="the dev extra installs sentencepiece")
    pytest.importorskip("google.protobuf", reason="the dev extra installs protobuf")
    from llama2_tokenizer import build_llama2_tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_llama2_tokenizer(tmp_path_factory.mktemp("llama2-sp")))


def test_sentencepiece_merges_the_trailing_space_and_we_move_the_boundary(llama2_tokenizer):
    tok = llama2_tokenizer
    # The hazard itself, so the test cannot pass vacuously: "▁" ends the prompt, "▁The" starts the whole.
    alone, whole = tok("x [/INST] ").input_ids, tok("x [/INST] The").input_ids
    assert tok.convert_ids_to_tokens(alone)[-1] == "▁" and whole[:len(alone)] != alone
    # Our plain math prompt ends "[/INST] ": its space moves into the completion, so "▁The" is trained.
    text, moved, trained = trained_text(tok, "math", "plain")
    assert moved == 1 and tok.convert_ids_to_tokens(trained)[0] == "▁The"
    # The paper preset trains on the reference code's very tokens: it tokenized "[/INST]" and the
    # response separately, the response with SentencePiece's prefix space ("▁The ...").
    text, moved, trained = trained_text(tok, "paper_math", "plain")
    assert trained == tok(RESPONSE, add_special_tokens=False).input_ids + [tok.eos_token_id]
    check_layouts(tok)


@pytest.mark.slow
def test_smollm2_tokenizer_boundary():
    from sdft.models.resolve import load_tokenizer, resolve_model

    check_layouts(load_tokenizer(resolve_model("smollm2-135m-instruct")))


@pytest.mark.skipif(not (QWEN / "sdft-source.json").is_file(), reason=f"no converted Qwen2.5 model at {QWEN}")
def test_qwen_tokenizer_boundary():
    from transformers import AutoTokenizer

    check_layouts(AutoTokenizer.from_pretrained(QWEN))
