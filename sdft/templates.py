"""Prompt templates: the paper's presets, chat-template rendering, and user templates from a file.

Two families. *Distillation* templates (``using``, ``refer``, ``math``) show the original response as a
reference and ask the seed model to answer in its own words. *Prompt* templates (``alpaca``, ``math``,
``math_eval``) are used for training and evaluation. The ``paper_*`` variants lay the Llama-2 math prompts
out exactly as the reference code did (see docs/paper-fidelity.md). Each renders either as plain text (the paper's
Alpaca / Llama-2 strings) or through the tokenizer's chat template (``mode="chat"``): system and user turns
as messages, then the generation prompt, then the optional assistant prefix. The prefix primes the
answer (the paper's "Great! Let's think step by step.") and is never part of the distilled target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sdft import userfiles
from sdft.errors import ConfigError

_USING = ("Below are an instruction that describes a task along with a reference answer. "
          "Using the reference answer as a guide, write your own response.")
_REFER = ("Below are an instruction that describes a task along with a reference answer. "
          "Refer to the reference answer and write your own response.")
_MATH_DISTILL = ("You are an expert in math. Below are a math question and its reference answer. "
                 "Refer to the reference answer and write a response that appropriately answers the question.")
_ALPACA = ("Below is an instruction that describes a task. "
           "Write a response that appropriately completes the request.")
_MATH_TRAIN = ("You are an expert in math. Below is a math question. "
               "Write a response that appropriately answers the question.")
_MATH_EVAL = (_MATH_TRAIN + " Your final answer should be an integer at the end of your response, "
              "formatted as: The answer is {answer}.")
_REFERENCE_TURN = "### Instruction:\n{instruction}\n\n### Reference Answer:\n{reference}\n\n### Response:\n"
_ALPACA_TURN = "### Instruction:\n{instruction}\n\n### Response:\n"
# Llama-2 chat format, used by the paper's math prompts when rendered as plain text.
_LLAMA2 = "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] "
# The reference code's layout of the same prompts (its LLaMA-Factory templates gsm8k, gsm8k_infer,
# gsm8k_distill): the system block before "[INST]", and the prompt ends at "[/INST]" (used by the paper
# presets). It tokenized the response on its own, so SentencePiece's prefix space starts it ("▁The"):
# the training template ends in a space, which training moves into the completion at the token
# boundary (train_data.on_token_boundary), giving the reference's very tokens.
_LLAMA2_REFERENCE = "<<SYS>>\n{system}\n<</SYS>>\n\n[INST] {user} [/INST]"

Mode = Literal["auto", "chat", "plain"]


@dataclass(frozen=True)
class Template:
    """A prompt template.

    ``system``: system text. ``user``: the user turn in chat mode. ``plain``: the whole prompt in plain
    mode (``{system}`` and ``{user}`` may appear in it). Placeholders: ``{instruction}``, ``{reference}``.
    ``assistant_prefix``: text appended after the generation prompt, not part of the target.
    """

    name: str
    system: str
    user: str
    plain: str
    assistant_prefix: str = ""

    @property
    def uses_reference(self) -> bool:
        return "{reference}" in self.user or "{reference}" in self.plain


DISTILL_TEMPLATES = {
    "using": Template("using", _USING, _REFERENCE_TURN.removesuffix("\n\n### Response:\n"),
                      "{system}\n\n" + _REFERENCE_TURN),
    "refer": Template("refer", _REFER, _REFERENCE_TURN.removesuffix("\n\n### Response:\n"),
                      "{system}\n\n" + _REFERENCE_TURN),
    "math": Template("math", _MATH_DISTILL, "{instruction}\n\n{reference}", _LLAMA2,
                     assistant_prefix="Great! Let's think step by step. "),
    "paper_math": Template("paper_math", _MATH_DISTILL, "{instruction}\n\n{reference}", _LLAMA2_REFERENCE + " ",
                           assistant_prefix="Great! Let's think step by step. "),
}

PROMPT_TEMPLATES = {
    "alpaca": Template("alpaca", _ALPACA, "{instruction}", "{system}\n\n" + _ALPACA_TURN),
    "math": Template("math", _MATH_TRAIN, "{instruction}", _LLAMA2),
    "math_eval": Template("math_eval", _MATH_EVAL, "{instruction}", _LLAMA2),
    "paper_math": Template("paper_math", _MATH_TRAIN, "{instruction}", _LLAMA2_REFERENCE + " "),
    "paper_math_eval": Template("paper_math_eval", _MATH_EVAL, "{instruction}", _LLAMA2_REFERENCE),
}

# Which preset each task kind uses when the user names none (paper §1-2).
DEFAULT_DISTILL = {"general": "using", "math": "math", "function_call": "refer", "code": "refer"}
DEFAULT_PROMPT = {"general": "alpaca", "math": "math", "function_call": "alpaca", "code": "alpaca"}


def _parse_json_template(text: str, path: Path):
    try:
        data = userfiles.loads_json(text)
    except ValueError as exc:  # JSONDecodeError included
        raise ConfigError(f"{path}: cannot parse template file ({exc})") from None
    bad = userfiles.problem(data)
    if bad:
        raise ConfigError(f"{path}: " + (f"field '{bad[0]}': " if bad[0] else "") + bad[1])
    return data


def load_template(name_or_path: str, family: Literal["distill", "prompt"]) -> Template:
    """A preset by name, or a user template from a YAML/JSON file with the Template fields."""
    presets = DISTILL_TEMPLATES if family == "distill" else PROMPT_TEMPLATES
    if name_or_path in presets:
        return presets[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"unknown {family} template '{name_or_path}': not a preset "
                          f"({', '.join(presets)}) and no such regular file")
    try:
        text = path.read_text(encoding="utf-8")
        data = _parse_json_template(text, path) if path.suffix == ".json" else userfiles.loads_yaml(text, str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read template file ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a template file holds a mapping with keys system, user, plain")
    known = {"system", "user", "plain", "assistant_prefix"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{path}: unknown template key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    if "user" not in data:
        raise ConfigError(f"{path}: field 'user' is required (e.g. '{{instruction}}')")
    system = str(data.get("system", ""))
    user = str(data["user"])
    plain = str(data.get("plain", ("{system}\n\n" if system else "") + user))
    template = Template(path.stem, system, user, plain, str(data.get("assistant_prefix", "")))
    if family == "distill" and not template.uses_reference:
        raise ConfigError(f"{path}: a distillation template must contain {{reference}}")
    return template


def resolve_mode(mode: Mode, tokenizer) -> Literal["chat", "plain"]:
    """``auto`` picks chat mode when the tokenizer has a chat template (modern chat models)."""
    if mode == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if mode == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("template mode 'chat' needs a tokenizer with a chat template; use --template-mode plain")
    return mode


_PLACEHOLDER = re.compile(r"\{(system|user|instruction|reference)\}")


def _fill(text: str, instruction: str, reference: str | None, system: str = "", user: str = "") -> str:
    # One pass with a regex, not str.format or chained replace: instructions and references contain
    # braces (code, JSON), and a literal "{reference}" inside an instruction must survive.
    values = {"system": system, "user": user, "instruction": instruction, "reference": reference or ""}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render(template: Template, instruction: str, *, reference: str | None = None, tokenizer=None,
           mode: Mode = "auto", history: list[tuple[str, str]] | None = None,
           system: str | None = None) -> str:
    """Render a prompt string ready for generation (ends where the model's answer begins).

    ``system`` overrides the template's system text (e.g. a record's own system prompt).
    """
    if template.uses_reference and reference is None:
        raise ValueError(f"template '{template.name}' needs a reference answer")
    system_text = template.system if system is None else system
    user_text = _fill(template.user, instruction, reference)
    concrete = resolve_mode(mode, tokenizer) if tokenizer is not None else ("plain" if mode == "auto" else mode)
    if concrete == "chat":
        messages = chat_messages(system_text, user_text, history)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt + template.assistant_prefix
    if history:
        # Plain text has no turn markers of its own: earlier turns go in Alpaca form after the system text.
        past = "\n\n".join(f"### Instruction:\n{u}\n\n### Response:\n{a}" for u, a in history)
        system_text = f"{system_text}\n\n{past}" if system_text else past
    body = _fill(template.plain, instruction, reference, system_text, user_text)
    return body + template.assistant_prefix


def chat_messages(system: str, user: str, history: list[tuple[str, str]] | None = None) -> list[dict]:
    """The conversation a chat-mode prompt renders: system turn (when any), earlier turns, the user turn."""
    messages = [{"role": "system", "content": system}] if system else []
    for user_turn, assistant_turn in history or []:
        messages += [{"role": "user", "content": user_turn}, {"role": "assistant", "content": assistant_turn}]
    messages.append({"role": "user", "content": user})
    return messages


def prompt_messages(template: Template, instruction: str, *, history: list[tuple[str, str]] | None = None,
                    system: str | None = None) -> list[dict]:
    """The messages ``render`` would pass to the chat template (trainers that apply it themselves)."""
    if template.uses_reference:
        raise ValueError(f"template '{template.name}' needs a reference answer")
    return chat_messages(template.system if system is None else system, _fill(template.user, instruction, None),
                         history)
