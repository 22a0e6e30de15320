"""Evaluation tasks: a registry of lazy ``"module:Class"`` strings and one abstract base per task kind.

A task yields examples (dicts with a stable ``"id"``) and scores one model output per example. The
evaluation driver (``sdft.evaluate.stage``) dispatches on the base class, never on probed attributes:

* :class:`GenerativeTask`: ``prompt(example, tokenizer) -> str`` goes to a generation backend;
  ``score_with_reason(example, completion) -> (score, reason)`` grades it (1.0 = correct / safe / passed),
  or ``score_batch`` for tasks that grade many at once (a sandbox pool); ``verdict(reason)`` says which
  part of a reason the per-item scores may keep.
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
from collections.abc import Callable
from dataclasses import dataclass
from math import isfinite  # not `import math`: the submodule sdft.tasks.math would shadow it
from pathlib import Path
from typing import Any, ClassVar, Literal

from sdft.base import templates
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
    # The ``--option TASK.KEY=VALUE`` keys this class adds to its bases', each with its default, which also
    # gives the value's type (a tuple: the accepted values, the first the default; a bare type: typed, no
    # default; None: any text). Checked by :meth:`check_options` when the config is built, before any work.
    option_spec: ClassVar[dict[str, Any]] = {}
    option_prefixes: ClassVar[tuple[str, ...]] = ()  # families of keys, e.g. a user task's ``column.ROLE``

    def __init__(self, data_path: str | None = None, **options: Any):
        self.data_path = data_path
        self.options = options
        # Where the examples came from (path + sha256, carrier package + version, hub name): provenance.
        self.source: str | None = None

    @abstractmethod
    def examples(self) -> list[dict]:
        """The task's items, each with a stable ``"id"``."""

    @classmethod
    def valid_options(cls) -> dict[str, Any]:
        """Every option key the task takes (its own and its bases'), with its spec."""
        spec: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            spec.update(vars(klass).get("option_spec", {}))
        return spec

    @classmethod
    def check_options(cls, task: str, options: dict[str, Any]) -> None:
        """Refuse, in one line naming the task, an option key the task does not take (listing those it
        does) or a value of the wrong type; the task's own constructor checks ranges and file names later."""
        spec = cls.valid_options()
        for key, value in options.items():
            if key not in spec and not key.startswith(cls.option_prefixes):
                valid = sorted(spec) + [f"{p}<name>" for p in cls.option_prefixes]
                raise ConfigError(f"task {task}: unknown option '{key}' (--option {task}.{key}); "
                                  + (f"valid options: {', '.join(valid)}" if valid else "it takes no options"))
            problem = _option_problem(spec.get(key), value)
            if problem:
                raise ConfigError(f"task {task}: option {key} {problem}, got {value!r}")

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

    # The eval-wide --template-mode and --system-prompt, for this task alone (e.g. gsm8k.template_mode=chat).
    option_spec = {"template_mode": ("auto", "chat", "plain"), "system_prompt": None}
    max_new_tokens: ClassVar[int] = 256  # default answer budget (overridable with --max-new-tokens)
    stop: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def prompt(self, example: dict, tokenizer) -> str:
        """The rendered prompt (the tokenizer's chat template where the options ask for it)."""

    def render(self, template, instruction: str, tokenizer, **overrides) -> str:
        """``templates.render`` with this task's template mode and system-prompt choice (eval options)."""
        settings = {"mode": self.options.get("template_mode", "auto"),
                    "system_prompt": self.options.get("system_prompt", templates.DEFAULT_SYSTEM_PROMPT)}
        return templates.render(template, instruction, tokenizer=tokenizer, **{**settings, **overrides})

    @abstractmethod
    def score_with_reason(self, example: dict, completion: str) -> tuple[float | None, Any]:
        """``(score, reason)`` for one answer. A score of None marks an item the task could not score here
        (IFBench's POS-tagger instructions without NLTK's tagger data): it is kept out of every mean and
        paired comparison, and the task's ``aggregate``, which must handle None, reports how many."""

    def score(self, example: dict, completion: str) -> float:
        return self.score_with_reason(example, completion)[0]

    def verdict(self, reason: Any) -> str | None:
        """The scorer's ``reason`` as a label for the per-item scores file (``sdft.base.item_scores``), or
        None. None unless a task knows its reasons are labels: a reason may quote the answer (a program's
        error output, a user checker's message), and that file must hold no answer text."""
        return None

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
        """The results entry (see :meth:`Task.entry`), with the per-item records, if the harness gives
        them, under ``records`` (log-likelihood records: id, score, chosen; the driver writes them out)."""


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
    "ifeval": "sdft.tasks.ifeval:IFEval",
    "ifbench": "sdft.tasks.ifeval:IFBench",
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


def task_class(name: str, user_task: bool = False) -> type[Task]:
    """The class :func:`get_task` would build for ``name`` (``user_task``: it comes with a checker)."""
    for prefix, target in TASK_PREFIXES.items():
        if name.startswith(prefix):
            return import_target(target, "task")
    if name not in TASKS and user_task:
        return import_target(CUSTOM_TASK, "task")
    if name not in TASKS:
        get_task(name)  # the one "unknown task" message
    return import_target(TASKS[name], "task")


def answers_text(name: str) -> bool:
    """Whether a task's records hold written answers (a generative task, or a user task: always generative)."""
    if name.startswith(tuple(TASK_PREFIXES)):
        return False
    try:
        return issubclass(import_target(TASKS[name], "task"), GenerativeTask) if name in TASKS else True
    except ConfigError:
        return True


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _option_problem(spec: Any, value: Any) -> str | None:
    """What is wrong with an option value (text from the command line or YAML), judged by its spec."""
    if spec is None:
        return None
    if isinstance(spec, tuple):
        return None if value in spec else f"must be one of {', '.join(spec)}"
    kind = spec if isinstance(spec, type) else type(spec)
    if kind is bool:
        return None if isinstance(value, bool) or str(value).lower() in _TRUE + _FALSE else "must be true or false"
    if kind is int:
        try:
            ok = not isinstance(value, (bool, float)) and int(value) is not None
        except (TypeError, ValueError):
            ok = False
        return None if ok else "must be an integer"
    if kind is float:
        try:
            ok = not isinstance(value, bool) and isfinite(float(value))
        except (TypeError, ValueError):
            ok = False
        return None if ok else "must be a finite number"
    return None


def round_robin(examples: list[dict], key: Callable[[dict], str]) -> list[dict]:
    """The examples taken one group at a time (groups by ``key``, A-Z; each group in its own order): each
    group's first, then each one's second, ... so that `--limit N`, which takes the first N, spreads over
    every group rather than over the first few of a file that lists them group by group."""
    groups: dict[str, list[dict]] = {}
    for example in examples:
        groups.setdefault(key(example), []).append(example)
    queues = [groups[name] for name in sorted(groups)]
    return [queue[k] for k in range(max(map(len, queues), default=0)) for queue in queues if k < len(queue)]


def task_revisions(names: list[str], limited: bool = True) -> dict[str, int]:
    """``{name: revision}`` of the named built-in tasks whose revision matters (none: an empty dict); with
    ``limited=False`` (every item evaluated) a revision of the selection alone does not."""
    return {name: cls.revision for name in names if name in TASKS
            if (cls := import_target(TASKS[name], "task")).revision
            and (limited or cls.revision_scope != "selection")}
