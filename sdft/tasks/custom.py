"""User tasks: a dataset file plus a checker function, no code in sdft needed.

    sdft eval --tasks mytask --data mytask=file.jsonl --checker mytask=mypkg.checks:is_correct

The file is read by ``sdft.base.data.load_examples`` (alpaca, gsm8k, advbench, sharegpt, messages or
prompt_completion shape; every record needs a prompt side and a response/reference side). A conversation is
asked its last assistant turn with every turn before it in the prompt (tool calls and results included). The checker is called as
``checker(record, completion)`` with the record exactly as read, and returns ``True``/``False`` or a
score in [0, 1]; the metric is the mean with a 95% interval. Options (``--option mytask.KEY=VALUE``):
``template`` (a prompt preset, default ``alpaca``, or a template file), ``shape`` (force a data shape),
``column.ROLE=NAME`` (map a column to a role, e.g. ``column.response=answer``), ``metric`` (its name).
"""

from __future__ import annotations

import numbers
from pathlib import Path

from sdft.base import chat, templates
from sdft.base.data import load_examples
from sdft.base.errors import ConfigError, SdftError
from sdft.base.plugins import import_target
from sdft.base.provenance import file_sha256
from sdft.tasks import GenerativeTask


class CustomTask(GenerativeTask):
    max_new_tokens = 512
    option_spec = {"template": None, "shape": None, "metric": None}
    option_prefixes = ("column.",)

    def __init__(self, data_path: str | None = None, *, task_name: str = "custom", checker: str | None = None,
                 **options):
        super().__init__(data_path, checker=checker, **options)
        self.name = task_name
        if not data_path or not checker:
            raise ConfigError(f"user task '{task_name}' needs --data {task_name}=FILE and "
                              f"--checker {task_name}=module:function")
        self.checker_name = checker
        self.checker = import_target(checker, "checker")
        if not callable(self.checker):
            raise ConfigError(f"checker '{checker}' is not a function")
        self.metric = str(options.get("metric", "score"))
        self.template = templates.load_template(str(options.get("template", "alpaca")), "prompt")
        self.shape = str(options.get("shape", "auto"))
        self.columns = {k.split(".", 1)[1]: str(v) for k, v in options.items() if k.startswith("column.")}
        unknown = set(options) - {"template_mode", "system_prompt", "metric", "template", "shape"} \
            - {k for k in options if k.startswith("column.")}
        if unknown:
            raise ConfigError(f"user task '{task_name}': unknown option(s) {', '.join(sorted(unknown))}; "
                              "known: template, shape, column.ROLE, metric")

    def examples(self) -> list[dict]:
        loaded = load_examples(self.data_path, shape=self.shape, columns=self.columns or None)
        path = Path(self.data_path)
        self.source = f"{path} (sha256 {file_sha256(path)})" if path.is_file() else str(path)
        # A conversation with tools keeps the turns before its last answer (tool calls and results among them):
        # history pairs cannot hold them. Other conversations keep their history pairs, as they always have.
        return [{"id": ex.id, "instruction": ex.instruction, "history": ex.history, "system": ex.system,
                 "record": ex.source, "location": ex.location,
                 **({"turns": ex.turns[:-1], "tools": ex.tools} if ex.uses_tools else {})} for ex in loaded]

    def prompt(self, example: dict, tokenizer) -> str:
        if "turns" not in example:
            return self.render(self.template, example["instruction"], tokenizer, history=example["history"],
                               system=example["system"])
        mode = templates.resolve_mode(self.options.get("template_mode", "auto"), tokenizer) if tokenizer else "plain"
        if mode != "chat":
            raise SdftError(f"{example['location']}: a conversation with tool calls needs the chat template "
                            "(--option template_mode=chat or auto with a chat model), not plain text")
        return chat.render_context(self.template, example["turns"], example["tools"], tokenizer,
                                   system=example["system"],
                                   system_prompt=self.options.get("system_prompt", templates.DEFAULT_SYSTEM_PROMPT))

    def score_with_reason(self, example: dict, completion: str) -> tuple[float, str | None]:
        try:
            value = self.checker(example["record"], completion)
        except Exception as exc:  # the user's code: report where, not a traceback into sdft
            raise SdftError(f"checker {self.checker_name} failed on {example['location']} "
                            f"(id {example['id']}): {type(exc).__name__}: {exc}") from None
        if isinstance(value, bool):
            return float(value), None
        if isinstance(value, numbers.Real) and 0.0 <= float(value) <= 1.0:
            return float(value), None
        raise SdftError(f"checker {self.checker_name} returned {value!r} for {example['location']}; "
                        "it must return True/False or a number in [0, 1]")
