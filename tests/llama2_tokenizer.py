"""A Llama-2-style SentencePiece tokenizer, trained offline on a few lines (no Llama files ship offline).

Same recipe as Llama-2's tokenizer.model: BPE, byte fallback, digits split, a dummy prefix space,
whitespace kept as is, <unk>/<s>/</s> at ids 0/1/2; loaded through transformers' LlamaTokenizer (legacy
mode, as Llama-2-7b-chat-hf's tokenizer_config sets). What matters for the tests is the behaviour at a
prompt/response boundary: "[/INST] " alone ends in a lone "▁" token, "[/INST] The" merges it into "▁The".
Needs ``sentencepiece`` and ``protobuf`` (the dev extra).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\nWhat is 2 + 3?\n\n### Response:\nThe answer is 5.",
    "[INST] <<SYS>>\nYou are an expert in math. Below is a math question.\n<</SYS>>\n\nHow many? [/INST] The answer is 12.",
    "<<SYS>>\nYou are an expert in math.\n<</SYS>>\n\n[INST] Tom has 3 apples. [/INST] Great! Let's think step by step.",
    "Natalia sold 48 clips in April, and then she sold half as many clips in May. The answer is 72.",
    "Construct a function call: weather.get_current(city=\"Paris\") answers the question.",
]


def build_llama2_tokenizer(out_dir: str | Path) -> Path:
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=420, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        allow_whitespace_only_pieces=True, minloglevel=2)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": True}))
    return out
