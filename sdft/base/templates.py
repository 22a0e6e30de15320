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
from typing import ClassVar, Literal

from sdft.base import userfiles
from sdft.base.config import field
from sdft.base.errors import ConfigError

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


# --system-prompt: what goes in the system slot, for distillation, training and evaluation alike.
SYSTEM_PROMPTS = {
    "model": "the model's own: no system message, so the chat template writes its default (Qwen2.5: "
             "'You are Qwen, created by Alibaba Cloud...'; SmolLM2: 'You are a helpful AI assistant named "
             "SmolLM...'); plain mode has no such default and uses the template's text",
    "none": "an empty system message (it overrides a chat template's default); no system text in plain mode",
    "template": "the prompt template's own system text (the paper's text for the presets)",
}
DEFAULT_SYSTEM_PROMPT = "model"  # how chat models are deployed; the paper presets set "template"
SYSTEM_PROMPT_HELP = ("system text: model (the chat template's own default), none, template (the "
                      "template's text: the paper's for the presets), or your own text")


def check_system_prompt(value: str, where: str = "system_prompt") -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"'{where}' must be {', '.join(SYSTEM_PROMPTS)} or your own text; "
                          "for no system text use 'none'")


@dataclass
class SystemPromptSettings:
    """``--system-prompt``, declared once for every stage that renders prompts (distill, train, eval) and
    mixed into their configs as ``sdft.generation.EngineSettings`` is; a run's top-level ``system_prompt`` is
    this setting too (``sdft.base.config.override``: its own help text)."""

    section: ClassVar[str] = "system prompt"
    system_prompt: str = field(DEFAULT_SYSTEM_PROMPT, SYSTEM_PROMPT_HELP)

    def check_system_prompt_settings(self) -> None:
        """Called by the stages' ``validate``."""
        check_system_prompt(self.system_prompt)


def render(template: Template, instruction: str, *, reference: str | None = None, tokenizer=None,
           mode: Mode = "auto", history: list[tuple[str, str]] | None = None,
           system: str | None = None, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
    """Render a prompt string ready for generation (ends where the model's answer begins).

    ``system_prompt`` picks the system text (``model``, ``none``, ``template`` or custom text; see
    :data:`SYSTEM_PROMPTS`). ``system``, a prompt's own system text (a record's, a task's), wins over it.
    """
    if template.uses_reference and reference is None:
        raise ValueError(f"template '{template.name}' needs a reference answer")
    concrete = resolve_mode(mode, tokenizer) if tokenizer is not None else ("plain" if mode == "auto" else mode)
    system_text, preamble = _system_slot(template, system_prompt, system, concrete)
    user_text = _fill(template.user, instruction, reference)
    if preamble:
        user_text = f"{preamble}\n\n{user_text}"
    if concrete == "chat":
        messages = chat_messages(system_text, user_text, history)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt + template.assistant_prefix
    system_text = system_text or ""
    if history:
        # Plain text has no turn markers of its own: earlier turns go in Alpaca form after the system text.
        past = "\n\n".join(f"### Instruction:\n{u}\n\n### Response:\n{a}" for u, a in history)
        system_text = f"{system_text}\n\n{past}" if system_text else past
    if preamble and "{user}" not in template.plain:
        # Alpaca-style plain text writes the turn from {instruction} itself: the moved text follows the system.
        system_text = "\n\n".join(t for t in (system_text, preamble) if t)
    body = _fill(template.plain, instruction, reference, system_text, user_text)
    if not system_text and template.plain.startswith("{system}"):
        body = body.lstrip("\n")  # no system text: no blank lines where it would have been
    return body + template.assistant_prefix


def chat_messages(system: str | None, user: str, history: list[tuple[str, str]] | None = None) -> list[dict]:
    """The conversation a chat-mode prompt renders: system turn (None: none, so the chat template writes its
    default; "" an empty one), earlier turns, the user turn."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    for user_turn, assistant_turn in history or []:
        messages += [{"role": "user", "content": user_turn}, {"role": "assistant", "content": assistant_turn}]
    messages.append({"role": "user", "content": user})
    return messages


def prompt_messages(template: Template, instruction: str, *, history: list[tuple[str, str]] | None = None,
                    system: str | None = None, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """The messages ``render`` would pass to the chat template (trainers that apply it themselves)."""
    if template.uses_reference:
        raise ValueError(f"template '{template.name}' needs a reference answer")
    slot, _ = _system_slot(template, system_prompt, system, "chat")  # no preamble: not a distill template
    return chat_messages(slot, _fill(template.user, instruction, None), history)


def _system_slot(template: Template, choice: str, own: str | None, mode: str) -> tuple[str | None, str]:
    """``(system message, preamble)``. A message of None leaves the chat template to write its default.

    The template's system text moves in front of the user turn when something else takes the system
    slot and the template needs that text to make sense: a distillation template's system text is the
    instruction to rewrite the reference answer. A prompt template's (the paper's Alpaca framing) is
    dropped instead: a chat template already frames the turns.
    """
    check_system_prompt(choice)
    if choice == "template" or (choice == "model" and mode == "plain"):
        slot = template.system or None
    elif choice == "model":
        slot = None
    else:
        slot = "" if choice == "none" else choice
    if own:  # a record's or a task's own system text is part of the data
        slot = own
    moved = slot != (template.system or None) and template.uses_reference and bool(template.system)
    return slot, template.system if moved else ""


def model_default_system(tokenizer) -> str | None:
    """The system text a chat template writes when given none (what ``model`` means), or None.

    Found by rendering one conversation with a marker as the system message and one without: where the
    marker sits in the first, the default sits in the second.
    """
    marker, user = "\x00sdft-system\x00", [{"role": "user", "content": "\x00sdft-user\x00"}]
    try:
        with_marker = tokenizer.apply_chat_template([{"role": "system", "content": marker}, *user], tokenize=False)
        without = tokenizer.apply_chat_template(user, tokenize=False)
    except Exception:  # a template that refuses system messages (e.g. Gemma's older ones) has no default
        return None
    head, _, tail = with_marker.partition(marker)
    if not without.startswith(head) or not without.endswith(tail) or len(without) < len(head) + len(tail):
        return None
    return without[len(head):len(without) - len(tail)] or None


def describe_system(choice: str, tokenizer, mode: str, template: Template | None = None) -> dict:
    """What the system slot held, for run records: the choice and the text it stands for.

    Without ``template`` (evaluation: one per task) the template's text is in each task's settings.
    """
    record: dict = {"choice": choice, "mode": mode}
    if choice == "model" and mode == "chat":
        record["text"] = model_default_system(tokenizer) if tokenizer is not None else None
    elif choice in ("template", "model"):
        record["text"] = template.system if template is not None else "each task's template system text"
    else:
        record["text"] = "" if choice == "none" else choice
    return record
