"""`sdft eval`'s settings: the model and adapter, the tasks and their data and options, decoding, the judge, and the paper's preset."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from sdft.base import templates
from sdft.base.config import DEFAULT_MODEL, IF_SET, Validated, field, override
from sdft.base.endpoint import api_key, check_url
from sdft.base.errors import ConfigError
from sdft.base.templates import SystemPromptSettings
from sdft.generation import DecodingSettings, EngineSettings
from sdft.tasks import TASK_PREFIXES, TASKS, GenerativeTask, task_class

PRESETS = {
    # The reference code's evaluation: its do_predict runs pass no decoding flags, so they sample with the
    # LLaMA-Factory fork's GeneratingArguments defaults (T 0.95, top-p 0.7, top-k 50, 512 new tokens; seed
    # 42, HF's default); prompts cut at 1024 tokens from the right. Only HumanEval (bigcode harness,
    # --do_sample False) was greedy. See docs/paper-fidelity.md.
    "paper": {"temperature": 0.95, "top_p": 0.7, "top_k": 50, "max_new_tokens": 512, "seed": 42,
              "max_prompt_tokens": 1024, "truncation_side": "right", "greedy_tasks": ["humaneval"],
              "template_mode": "plain",  # as text (Llama-3 math excepted: --option gsm8k.template_mode=chat)
              "system_prompt": "template"},
}


@dataclass
class EvalConfig(EngineSettings, DecodingSettings, SystemPromptSettings, Validated):
    model: str = field(DEFAULT_MODEL, "model: alias, hub id, local folder or .gguf file")
    adapter: str | None = field(None, "optional LoRA adapter folder on top of the model")
    tasks: list[str] = field(default_factory=list, help="tasks, comma-separated: gsm8k, multiarith, openfunctions, bfcl, humaneval, advbench, "
                                 "advbench-jailbreak, winrate, alpaca_eval, ifeval, ifbench, arc, hellaswag, winogrande, mmlu, truthfulqa, "
                                 "lm_eval:<task>, or a user task (--data and --checker)")
    out: str = field("runs/eval", "output folder (rerun the same command to resume)", keyed=False)
    limit: int | None = field(None, "evaluate only the first N items of each task")
    data: list[str] = field(default_factory=list, help="TASK=PATH: a task's data file or hub name (repeatable)")
    checker: list[str] = field(default_factory=list, help="TASK=module:function for a user task (with --data)")
    option: list[str] = field(default_factory=list, help="TASK.KEY=VALUE task option, e.g. openfunctions.rule=paper")
    template_mode: templates.Mode = field("auto", "chat template (chat), plain text (plain), or auto")
    greedy_tasks: list[str] = field(default_factory=list, help="tasks decoded greedily whatever --temperature "
                                    "(the paper preset: humaneval, as the reference's bigcode harness did)")
    n_samples: int = field(1, "samples per item (needs temperature > 0); HumanEval reports pass@k from them")
    # Decoding (DecodingSettings) with evaluation's own prompt budget and help.
    max_prompt_tokens: int = override(DecodingSettings, "max_prompt_tokens", 2048)
    seed: int = override(DecodingSettings, "seed", help="random seed for sampling (sample j uses seed + j)")
    answer_prefix: str | None = field(None, "decoding probe: every answer starts with this text (written after the "
                                      "generation prompt; the model continues it; scored with it), e.g. '1.'",
                                      keyed=IF_SET)
    forbid_opening: str | None = field(None, "decoding probe: the answer's first visible token may not match this "
                                       "regular expression (greedy over the others, then decoding as usual), "
                                       r"e.g. '\d' for no numbered-list opening", keyed=IF_SET)
    stream_answers: bool = field(True, "generate every task's answers in one stream through the engine (vLLM keeps "
                                 "them all in flight; each is saved as it finishes); off: one task and one chunk "
                                 "at a time. Decoding probes always go one task at a time", keyed=False)
    judge: str | None = field(None, "winrate judge: a model our backends load, or an OpenAI-compatible URL")
    judge_model: str | None = field(None, "model name to request from a judge endpoint URL")
    judge_backend: str | None = field(None, "backend that loads a local judge (default: --backend)")
    progress: bool = field(True, "show a progress bar", keyed=False)

    def validate(self) -> None:
        if not self.tasks:
            raise ConfigError("eval needs --tasks, e.g. --tasks gsm8k,advbench")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"a task is listed twice in --tasks: {', '.join(self.tasks)}")
        data, checkers, options = self.data_paths(), self.checkers(), self.task_options()
        for name in self.tasks:
            known = name in TASKS or name.startswith(tuple(TASK_PREFIXES))
            if not known and not (name in data and name in checkers):
                raise ConfigError(f"unknown task '{name}'; known: {', '.join(sorted(TASKS))}; a user task "
                                  f"needs --data {name}=FILE and --checker {name}=module:function")
        unknown = [n for n in self.greedy_tasks if n not in TASKS and n not in self.tasks]
        if unknown:
            raise ConfigError(f"--greedy-tasks names unknown task(s) {', '.join(unknown)}")
        taken = sorted(set(checkers) & set(TASKS))
        if taken:
            raise ConfigError(f"--checker given for built-in task(s) {', '.join(taken)}, which score themselves; "
                              "give your user task another name")
        for what, mapping in (("--data", data), ("--checker", checkers), ("--option", options)):
            stray = sorted(set(mapping) - set(self.tasks))
            if stray:
                raise ConfigError(f"{what} names task(s) not in --tasks: {', '.join(stray)}")
        for name, given in options.items():  # a typo'd key is refused here, not ignored after hours of work
            task_class(name, user_task=name in checkers).check_options(name, given)
        for name in ("batch_size", "max_prompt_tokens", "n_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'{name}' must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("'limit' must be at least 1")
        self.check_decoding_settings()
        if self.n_samples > 1 and self.temperature <= 0:
            raise ConfigError("--n-samples above 1 needs --temperature above 0 (greedy samples are identical)")
        if "winrate" in self.tasks and not self.judge:
            raise ConfigError("task winrate needs --judge (a model, or an OpenAI-compatible endpoint URL)")
        if self.judge and self.judge.startswith(("http://", "https://")):
            check_url(self.judge, has_key=bool(api_key()))  # before anything is written or loaded
        self.check_opening_probe()
        self.check_system_prompt_settings()
        self.check_engine_settings()  # a backend option no backend takes: refused before any model loads

    def check_opening_probe(self) -> None:
        if self.answer_prefix is not None and not self.answer_prefix:
            raise ConfigError("'answer_prefix' must not be empty (leave it out for no prefix)")
        if self.forbid_opening is not None:
            try:
                re.compile(self.forbid_opening)
            except re.error as exc:
                raise ConfigError(f"'forbid_opening' {self.forbid_opening!r} is not a regular expression: {exc}") from None
        if not (self.answer_prefix or self.forbid_opening):
            return
        if self.n_samples > 1 or self.temperature > 0:
            raise ConfigError("the decoding probes (answer_prefix, forbid_opening) are greedy probes: use "
                              "temperature 0 and n_samples 1")
        if self.truncation_side == "right":  # the prompt's end, where the opening is written, would be cut
            raise ConfigError("the decoding probes need truncation_side left (the opening is written at the "
                              "prompt's end, which right truncation cuts)")
        other = [n for n in self.tasks if not issubclass(task_class(n, user_task=n in self.checkers()), GenerativeTask)]
        if other:
            raise ConfigError(f"the decoding probes change generated answers; task(s) {', '.join(other)} "
                              "generate none (log-likelihood or an external harness): evaluate them without a probe")

    def opening(self) -> dict | None:
        """The probe's settings as keyed with each task's answers (None without a probe: keys as before)."""
        probe = {"answer_prefix": self.answer_prefix, "forbid_opening": self.forbid_opening}
        return {k: v for k, v in probe.items() if v is not None} or None

    def decoding(self, task: str | None = None, task_budget: int = 256, stop: tuple[str, ...] = ()):
        """The :class:`GenerationParams` of a task: its own answer budget unless --max-new-tokens is set,
        greedy when it is one of --greedy-tasks."""
        greedy = {"temperature": 0.0} if task in self.greedy_tasks else {}
        return self.generation_params(task_budget, stop=stop, **greedy)

    def only(self, tasks: list[str]) -> EvalConfig:
        """This config narrowed to ``tasks`` (their data files, checkers and options kept, the others' dropped)."""
        keep = set(tasks)
        return replace(self, tasks=list(tasks), greedy_tasks=[t for t in self.greedy_tasks if t in keep],
                       data=[f"{t}={p}" for t, p in self.data_paths().items() if t in keep],
                       checker=[f"{t}={c}" for t, c in self.checkers().items() if t in keep],
                       option=[f"{t}.{k}={v}" for t, given in self.task_options().items() if t in keep
                               for k, v in given.items()])

    def data_paths(self) -> dict[str, str]:
        return _pairs(self.data, "--data", "TASK=PATH")

    def checkers(self) -> dict[str, str]:
        return _pairs(self.checker, "--checker", "TASK=module:function")

    def task_options(self) -> dict[str, dict[str, str]]:
        options: dict[str, dict[str, str]] = {}
        last = None
        for item in self.option:
            if last is not None and "=" not in item:
                # List settings are split at commas: mmlu.subjects=a,b arrives as "mmlu.subjects=a", "b".
                options[last[0]][last[1]] += "," + item.strip()
                continue
            task, dot, rest = item.partition(".")
            key, eq, value = rest.partition("=")
            if not dot or not eq or not task or not key.strip():
                raise ConfigError(f"--option '{item}' must look like TASK.KEY=VALUE")
            last = (task, key.strip())
            if last[1] in options.get(task, {}):
                raise ConfigError(f"--option {task}.{last[1]} is given twice")
            options.setdefault(task, {})[last[1]] = value.strip()
        return options


def _pairs(items: list[str], flag: str, form: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"{flag} '{item}' must look like {form}")
        if key.strip() in out:
            raise ConfigError(f"{flag} given twice for task '{key.strip()}'")
        out[key.strip()] = value.strip()
    return out
