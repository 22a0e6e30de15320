"""Prompt templates: the paper's exact texts, chat rendering with the assistant prefix, user files."""

import pytest

from sdft.base import templates
from sdft.base.errors import ConfigError


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
                              history=[("hi", "hello")], system_prompt="template")
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


# A chat template that, like Qwen2.5's and SmolLM2's, writes a default system turn when given none.
DEFAULTING = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Tiny, by default.<|im_end|>\n"
              "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _turns(system: str | None, user: str) -> str:
    head = "" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n"
    return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
def defaulting_tokenizer(tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = DEFAULTING
    return tok


def test_system_prompt_choices_render_the_system_slot(defaulting_tokenizer):
    tok, alpaca = defaulting_tokenizer, templates.PROMPT_TEMPLATES["alpaca"]
    expected = {"model": "You are Tiny, by default.", "none": "", "template": alpaca.system, "Be safe.": "Be safe."}
    for choice, system in expected.items():
        assert templates.render(alpaca, "Say hi.", tokenizer=tok, system_prompt=choice) == _turns(system, "Say hi.")
    # The default is the model's own, and a record's own system text wins over any choice.
    assert templates.render(alpaca, "Say hi.", tokenizer=tok) == _turns("You are Tiny, by default.", "Say hi.")
    assert templates.render(alpaca, "Say hi.", tokenizer=tok, system="Mine.", system_prompt="none") == \
        _turns("Mine.", "Say hi.")


def test_a_distillation_instruction_moves_to_the_user_turn_when_the_slot_is_taken(defaulting_tokenizer):
    refer = templates.DISTILL_TEMPLATES["refer"]
    turn = "### Instruction:\nAdd.\n\n### Reference Answer:\n5"
    for choice, system in {"model": "You are Tiny, by default.", "none": "", "Be safe.": "Be safe."}.items():
        prompt = templates.render(refer, "Add.", reference="5", tokenizer=defaulting_tokenizer, system_prompt=choice)
        assert prompt == _turns(system, f"{refer.system}\n\n{turn}")
    paper = templates.render(refer, "Add.", reference="5", tokenizer=defaulting_tokenizer, system_prompt="template")
    assert paper == _turns(refer.system, turn)


def test_plain_mode_has_no_model_default(defaulting_tokenizer):
    alpaca, using = templates.PROMPT_TEMPLATES["alpaca"], templates.DISTILL_TEMPLATES["using"]
    paper = templates.render(alpaca, "Say hi.", mode="plain", system_prompt="template")
    assert templates.render(alpaca, "Say hi.", mode="plain", system_prompt="model") == paper
    assert templates.render(alpaca, "Say hi.", mode="plain", system_prompt="none") == \
        "### Instruction:\nSay hi.\n\n### Response:\n"
    assert templates.render(alpaca, "Say hi.", mode="plain", system_prompt="Be safe.").startswith("Be safe.\n\n###")
    # The rewrite instruction is kept in plain text too.
    assert templates.render(using, "Add.", reference="5", mode="plain", system_prompt="none") == \
        templates.render(using, "Add.", reference="5", mode="plain", system_prompt="template")


def test_model_default_system_is_read_from_the_chat_template(defaulting_tokenizer, tiny_model):
    from transformers import AutoTokenizer
    assert templates.model_default_system(defaulting_tokenizer) == "You are Tiny, by default."
    assert templates.model_default_system(AutoTokenizer.from_pretrained(tiny_model)) is None  # writes none
    record = templates.describe_system("model", defaulting_tokenizer, "chat")
    assert record == {"choice": "model", "mode": "chat", "text": "You are Tiny, by default."}
    alpaca = templates.PROMPT_TEMPLATES["alpaca"]
    assert templates.describe_system("model", None, "plain", alpaca)["text"] == alpaca.system
    assert templates.describe_system("none", None, "chat")["text"] == ""
    with pytest.raises(ConfigError, match="'none'"):
        templates.check_system_prompt("  ")


@pytest.mark.slow
@pytest.mark.parametrize("alias, default", [
    ("smollm2-135m-instruct", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    ("qwen2.5-coder-0.5b-instruct", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
])
def test_real_chat_templates_and_their_default_system_prompts(alias, default):
    """The two aliases' own templates: each writes a default system turn, which 'model' keeps."""
    from sdft.base.errors import SdftError
    from sdft.models.aliases import part_files
    from sdft.models.resolve import load_tokenizer

    try:
        part_files(alias)
    except SdftError as exc:
        pytest.skip(str(exc))
    tok = load_tokenizer(alias)
    alpaca = templates.PROMPT_TEMPLATES["alpaca"]
    assert templates.model_default_system(tok) == default
    assert templates.render(alpaca, "Say hi.", tokenizer=tok, system_prompt="model") == _turns(default, "Say hi.")
    assert templates.render(alpaca, "Say hi.", tokenizer=tok, system_prompt="none") == _turns("", "Say hi.")
    assert templates.render(alpaca, "Say hi.", tokenizer=tok, system_prompt="template") == \
        _turns(alpaca.system, "Say hi.")
