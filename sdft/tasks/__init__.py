"""Evaluation tasks: a registry of lazy ``"module:Class"`` strings and one abstract base per task kind.

A task yields examples (dicts with a stable ``"id"``) and scores one model output per example. The
evaluation driver (``sdft.evaluate.stage``) dispatches on the base class, never on probed attributes:

* :class:`GenerativeTask`: ``prompt(example, tokenizer) -> str`` goes to a generation backend;
  ``score_with_reason(example, completion) -> (score, reason)`` grades it (1.0 = correct / safe / passed),
  or ``score_batch`` for tasks that grade many at once (a sandbox pool).
* :class:`JudgedTask`: a generative task graded by a judge model (``context.judge``).
* :class:`LoglikelihoodTask`: ``choices(example) -> (context, [continuation, ...])`` and
  ``score(example, chosen_index) -> float``; the model picks the most likely continuation (``sdft.generation.loglik``).
* :class:`ExternalTask`: runs itself, ``run(model, adapter, config) -> entry`` (lm-eval hand-off).

What the driver supplies while scoring (judge, cache folder, settings key) comes in a
:class:`TaskContext`, not as attributes set after construction. Every metric is a
:class:`sdft.base.stats.Metric`; :meth:`Task.entry` builds the ``results.json`` entry from them. The answer
checkers used in scoring live in ``sdft.base.answers``, shared with the distillation filters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from sdft.base.errors import ConfigError
from sdft.base.plugins import import_target
from sdft.base.stats import Metric


@dataclass
class TaskContext:
    """What the evaluation driver supplies to a task while it scores."""

    settings_key: str = "nokey"        # the task's stage key: names caches of extra work (judge verdicts)
    cache_dir: Path | None = None      # where such caches live (None: no caching)
    judge: Any = None                  # a judge for JudgedTask (``ask(prompts) -> texts``, ``batch_size``)
    out_dir: Path | None = None        # the eval folder, for tasks that export files beside results.json


class Task(ABC):
    """Common part of every task. Subclass one of the kind bases below, not this."""

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "accuracy"
    template: ClassVar[Any] = None  # the prompt template, recorded in the settings when there is one
    # Bumped when a change alters which items a task takes or how it scores them: it keys `sdft run`'s
    # evaluation stages (a finished stage from before is evaluated again, not mixed with new ones).
    # "selection": the revision changed only which items `--limit N` takes, so a run without a limit,
    # which takes them all, keeps its stages.
    revision: ClassVar[int] = 0
    revision_scope: ClassVar[Literal["scoring", "selection"]] = "scoring"

    def __init__(self, data_path: str | None = None, **options: Any):
        self.data_path = data_path
        self.options = options
        # Where the examples came from (path + sha256, carrier package + version, hub name): provenance.
        self.source: str | None = None

    @abstractmethod
    def examples(self) -> list[dict]:
        """The task's items, each with a stable ``"id"``."""

    def check_ready(self) -> None:
        """Raise now, before any model loads, when the task cannot run here (a missing package)."""

    def aggregate(self, scores: list[float], records: list[dict], context: TaskContext | None = None) -> dict:
        """The results entry: mean score with its 95% interval; tasks with other statistics override."""
        return self.entry({self.metric: Metric.of_scores(scores)})

    def entry(self, metrics: dict[str, Metric], **extra: Any) -> dict:
        """A ``results.json`` entry: the headline metric at top level, every metric under ``metrics``
        (headline first, so it leads the report's columns)."""
        head = metrics[self.metric]
        return {"metric": self.metric, **head.to_json(), **extra,
                "metrics": {self.metric: head.to_json(), **{k: m.to_json() for k, m in metrics.items()}}}


class GenerativeTask(Task):
    """A model writes an answer to a prompt; the task grades the text."""

    max_new_tokens: ClassVar[int] = 256  # default answer budget (overridable with --max-new-tokens)
    stop: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def prompt(self, example: dict, tokenizer) -> str:
        """The rendered prompt (the tokenizer's chat template where the options ask for it)."""

    def render(self, template, instruction: str, tokenizer, **overrides) -> str:
        """``templates.render`` with this task's template mode and system-prompt choice (eval options)."""
        from sdft.base import templates
        settings = {"mode": self.options.get("template_mode", "auto"),
                    "system_prompt": self.options.get("system_prompt", templates.DEFAULT_SYSTEM_PROMPT)}
        return templates.render(template, instruction, tokenizer=tokenizer, **{**settings, **overrides})

    @abstractmethod
    def score_with_reason(self, example: dict, completion: str) -> tuple[float, Any]:
        """``(score, reason)`` for one answer."""

    def score(self, example: dict, completion: str) -> float:
        return self.score_with_reason(example, completion)[0]

    def score_batch(self, examples: list[dict], completions: list[str],
                    context: TaskContext | None = None) -> list[tuple[float, Any]]:
        """Grade many answers; one at a time unless a task can do better (a sandbox pool, a judge)."""
        return [self.score_with_reason(ex, c) for ex, c in zip(examples, completions)]


class JudgedTask(GenerativeTask):
    """A generative task graded by a judge model, which the driver builds and passes in the context."""

    def score_with_reason(self, example: dict, completion: str) -> tuple[float, Any]:
        raise ConfigError(f"task {self.name} is graded by a judge: score it with score_batch and a context")

    @abstractmethod
    def score_batch(self, examples: list[dict], completions: list[str],
                    context: TaskContext | None = None) -> list[tuple[float, Any]]:
        """Grade with ``context.judge``."""


class LoglikelihoodTask(Task):
    """The model picks, by log-likelihood, one of several continuations of a context."""


    @abstractmethod
    def choices(self, example: dict) -> tuple[Any, list[str]]:
        """``(context, [continuation, ...])``."""

    @abstractmethod
    def score(self, example: dict, chosen: int) -> float:
        """1.0 when the chosen continuation is the right one."""


class ExternalTask(Task):
    """A task that runs itself (another harness), given the model to evaluate."""


    def examples(self) -> list[dict]:
        return []  # the harness loads its own data

    @abstractmethod
    def run(self, model: str, adapter: str | None, config: Any = None) -> dict:
        """The results entry (see :meth:`Task.entry`)."""


TASKS: dict[str, str] = {
    "gsm8k": "sdft.tasks.math:GSM8K",
    "multiarith": "sdft.tasks.math:MultiArith",
    "openfunctions": "sdft.tasks.function_call:OpenFunctions",
    "bfcl": "sdft.tasks.function_call:BFCL",
    "humaneval": "sdft.tasks.humaneval:HumanEval",
    "advbench": "sdft.tasks.advbench:AdvBench",
    "advbench-jailbreak": "sdft.tasks.advbench:AdvBenchJailbreak",
    "winrate": "sdft.tasks.winrate:WinRate",
    "alpaca_eval": "sdft.tasks.alpaca_eval:AlpacaEval",
    "arc": "sdft.tasks.multiple_choice:ARC",
    "hellaswag": "sdft.tasks.multiple_choice:HellaSwag",
    "winogrande": "sdft.tasks.multiple_choice:Winogrande",
    "mmlu": "sdft.tasks.multiple_choice:MMLU",
    "truthfulqa": "sdft.tasks.multiple_choice:TruthfulQA",
}
# Name prefixes handled by one class each, e.g. "lm_eval:hellaswag".
TASK_PREFIXES: dict[str, str] = {
    "lm_eval:": "sdft.tasks.lm_eval:LMEvalTask",
}


# A name in neither table is a user task when it comes with a ``checker`` option ("module:function").
CUSTOM_TASK = "sdft.tasks.custom:CustomTask"


def get_task(name: str, data_path: str | None = None, **options: Any) -> Task:
    """Instantiate a task by registry name or prefix (or a user task: a data file plus a checker)."""
    for prefix, target in TASK_PREFIXES.items():
        if name.startswith(prefix):
            return import_target(target, "task")(data_path, task_name=name[len(prefix):], **options)
    if name not in TASKS and options.get("checker"):
        return import_target(CUSTOM_TASK, "task")(data_path, task_name=name, **options)
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; known: {', '.join(sorted(TASKS))}, "
                          f"or {', '.join(p + '<task>' for p in TASK_PREFIXES)}, "
                          f"or a user task: --data {name}=FILE --checker {name}=module:function")
    return import_target(TASKS[name], "task")(data_path, **options)


def task_revisions(names: list[str], limited: bool = True) -> dict[str, int]:
    """``{name: revision}`` of the named built-in tasks whose revision matters (none: an empty dict); with
    ``limited=False`` (every item evaluated) a revision of the selection alone does not."""
    return {name: cls.revision for name in names if name in TASKS
            if (cls := import_target(TASKS[name], "task")).revision
            and (limited or cls.revision_scope != "selection")}
