"""Evaluation tasks: a registry of lazy ``"module:Class"`` strings and a small common interface.

A task yields examples (dicts with a stable ``"id"``) and scores one model output per example.

* ``kind = "generate"``: ``prompt(example, tokenizer) -> str`` is sent to a generation backend and
  ``score(example, completion_text) -> float`` grades the completion (1.0 = correct / safe / passed).
* ``kind = "loglikelihood"``: ``choices(example) -> (context, [continuation, ...])`` and
  ``score(example, chosen_index) -> float``; the model picks the continuation with the highest
  log-likelihood (see ``sdft.loglik``).
* ``kind = "external"``: the task runs itself, ``run(model, adapter, config) -> metrics`` (lm-eval hand-off).

The answer checkers used in ``score`` live in ``sdft.answers``, shared with the distillation filters.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from sdft.errors import ConfigError
from sdft.generation import import_target


class Task:
    """Base class. Subclasses set the class attributes and implement the methods for their kind."""

    name: ClassVar[str] = ""
    kind: ClassVar[Literal["generate", "loglikelihood", "external"]] = "generate"
    metric: ClassVar[str] = "accuracy"
    # Default output budget for generative tasks (overridable with --max-new-tokens).
    max_new_tokens: ClassVar[int] = 256

    def __init__(self, data_path: str | None = None, **options: Any):
        self.data_path = data_path
        self.options = options
        # Where the examples came from (path + sha256, carrier package + version, hub name): provenance.
        self.source: str | None = None

    def examples(self) -> list[dict]:
        raise NotImplementedError

    def prompt(self, example: dict, tokenizer) -> str:
        raise NotImplementedError

    def choices(self, example: dict) -> tuple[str, list[str]]:
        raise NotImplementedError

    def score(self, example: dict, output) -> float:
        """Tasks that explain their grades define ``score_with_reason -> (score, reason)``; others override."""
        return self.score_with_reason(example, output)[0]

    def aggregate(self, scores: list[float], records: list[dict]) -> dict:
        """Metric value and 95% interval; tasks with other statistics (pass@k, win rate) override."""
        from sdft.stats import mean_interval
        value, low, high = mean_interval(scores)
        return {"metric": self.metric, "value": value, "ci95": [low, high], "n": len(scores)}


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
