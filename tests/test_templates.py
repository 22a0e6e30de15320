"""Prompt templates: the paper's exact texts, chat rendering with the assistant prefix, user files."""

import pytest

from sdft import templates
from sdft.errors import ConfigError


def test_paper_plain_prompts_are_exact():
    using = templates.render(templates.DISTILL_TEMPLATES["using"], "Add 2 and 3.", reference="5")
    assert using == ("Below are an instruction that describes a task along with a reference answer. Using the "
                     "reference answer as a guide, write your own response.\n\n### Instruction:\nAdd 2 and 3."
                     "\n\n### Reference Answer:\n5\n\n### Response:\n")
    alpaca = templates.render(templates.PROMPT_TEMPLATES["alpaca"], "Say hi.")
    assert alpaca == ("Below is an instruction that describes a task. Write a response that appropriately "
                      "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n")
    math = templates.render(templates.DISTILL_TEMPLATES["math"], "2+2?", reference="4")
    assert math.endswith("2+2?\n\n4 [/INST] Great! Let's think step by step. ")
    assert "{answer}" in templates.PROMPT_TEMPLATES["math_eval"].system  # literal in the paper's prompt


def test_chat_mode_renders_messages_and_appends_prefix(tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = templates.render(templates.DISTILL_TEMPLATES["math"], "2+2?", reference="4", tokenizer=tok,
                              history=[("hi", "hello")])
    assert prompt.startswith("<|im_start|>system\nYou are an expert in math.")
    assert "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>user\n2+2?\n\n4<|im_end|>\n<|im_start|>assistant\n"
                           "Great! Let's think step by step. ")
    assert templates.resolve_mode("auto", tok) == "chat"


def test_braces_in_user_text_survive():
    out = templates.render(templates.DISTILL_TEMPLATES["refer"], 'f("{reference}", {x})', reference="{instruction}")
    assert 'f("{reference}", {x})' in out and "### Reference Answer:\n{instruction}" in out


def test_reference_required_for_distill_templates():
    with pytest.raises(ValueError):
        templates.render(templates.DISTILL_TEMPLATES["using"], "x")


def test_user_template_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text('system: Be brief.\nuser: "Q: {instruction}\\nReference: {reference}"\nassistant_prefix: "A:"\n')
    template = templates.load_template(str(path), "distill")
    assert templates.render(template, "why?", reference="because") == "Be brief.\n\nQ: why?\nReference: becauseA:"
    (tmp_path / "bad.yaml").write_text("user: '{instruction}'\ncolour: red\n")
    with pytest.raises(ConfigError, match="colour"):
        templates.load_template(str(tmp_path / "bad.yaml"), "prompt")
    (tmp_path / "noref.yaml").write_text("user: '{instruction}'\n")
    with pytest.raises(ConfigError, match="reference"):
        templates.load_template(str(tmp_path / "noref.yaml"), "distill")
    with pytest.raises(ConfigError, match="unknown distill template"):
        templates.load_template("nope", "distill")
