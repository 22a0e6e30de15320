"""A tiny random llama model and byte-level BPE tokenizer, built offline for fast tests."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\nWhat is 2 + 3?\n\n### Response:\nThe answer is 5.",
    "You are an expert in math. Great! Let's think step by step. The answer is 42.",
    "def add(a, b):\n    return a + b\n",
    "weather.get(city=\"Paris\", unit='C') 0123456789 ,.$#-",
]


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    return out


def trained_lora(model_dir, out):
    """A LoRA on the tiny model with random (nonzero) B, saved with a tokenizer like 'sdft train' does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param))
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    (out / "train.json").write_text("{}")  # a training record is not part of the scaled adapter
    return out


def gsm8k_file(tmp_path: Path, n: int) -> Path:
    """GSM8K-shaped records (question, answer ending in #### N), written here: no shared data needed."""
    rows = [{"question": f"Tom has {a} apples and buys {a + 3} more. How many apples does he have?",
             "answer": f"{a} + {a + 3} = {2 * a + 3}\n#### {2 * a + 3}"} for a in range(2, 2 + n)]
    path = tmp_path / "gsm8k.json"
    path.write_text(json.dumps(rows))
    return path
