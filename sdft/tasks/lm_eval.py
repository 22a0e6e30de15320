"""``lm_eval:<task>``: hand a benchmark over to EleutherAI's lm-evaluation-harness when it is installed.

lm-eval is deliberately not a dependency (it pins many packages and downloads its datasets from the hub),
so this task checks for it at run time and says how to install it. The model is passed as lm-eval's
``hf`` model with ``pretrained=<local folder>`` (our aliases and GGUF files resolved first, so lm-eval
never needs the hub for the weights) and ``peft=<adapter>``; the metrics come back in the shape of
:meth:`Task.aggregate` (``metric``, ``value``, ``ci95``, ``n``) plus lm-eval's raw numbers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from sdft.base.errors import ConfigError, SdftError
from sdft.base.stats import Metric
from sdft.tasks import ExternalTask

INSTALL_HINT = "pip install lm-eval"
# Which of lm-eval's metrics is the headline one, first present wins (acc_norm where lm-eval reports it,
# as leaderboards quote it for ARC and HellaSwag).
_HEADLINE = ("acc_norm", "acc", "exact_match", "pass@1", "f1", "mc2", "bleu", "word_perplexity")


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


class LMEvalTask(ExternalTask):
    """Any lm-eval task (or group) by name, e.g. ``lm_eval:hellaswag`` or ``lm_eval:mmlu``.

    Options: ``num_fewshot`` (lm-eval's default when unset), ``dtype`` (e.g. ``float32``), ``metric``
    (the headline metric, e.g. ``acc``: the paper reports lm-eval's ``acc`` for ARC and TruthfulQA).
    """

    metric = "lm_eval"
    option_spec = {"num_fewshot": int, "dtype": None, "metric": None}

    def __init__(self, data_path: str | None = None, task_name: str = "", **options: Any):
        super().__init__(data_path, **options)
        if not task_name:
            raise ConfigError("lm_eval: name the lm-evaluation-harness task, e.g. lm_eval:hellaswag")
        if data_path:
            raise ConfigError(f"lm_eval:{task_name} reads its data through lm-eval; --data does not apply")
        self.task_name = task_name
        self.name = f"lm_eval:{task_name}"

    def build_arguments(self, model_path: str, adapter: str | None, config: Any = None) -> dict:
        """Keyword arguments for ``lm_eval.simple_evaluate`` (kept separate so they can be checked)."""
        model_args: dict[str, Any] = {"pretrained": str(model_path)}
        if adapter:
            model_args["peft"] = str(adapter)
            if (Path(adapter) / "tokenizer_config.json").is_file():
                # Training saves the tokenizer beside the adapter; use it, as sdft.models.resolve does.
                model_args["tokenizer"] = str(adapter)
        dtype = self.options.get("dtype") or getattr(config, "dtype", None)
        if dtype:
            model_args["dtype"] = str(dtype)
        args: dict[str, Any] = {
            "model": "hf",
            # A dict, not lm-eval's "k=v,k=v" string: a comma in a folder name would split the string.
            "model_args": model_args,
            "tasks": [self.task_name],
            "batch_size": getattr(config, "batch_size", None) or 8,
            "log_samples": False,
        }
        for key in ("limit", "device"):
            value = getattr(config, key, None)
            if value is not None:
                args[key] = value
        if self.options.get("num_fewshot") is not None:
            args["num_fewshot"] = int(self.options["num_fewshot"])
        return args

    def check_ready(self) -> None:
        """Called before any model loads, so a long run does not stop hours in for a missing package."""
        if not lm_eval_available():
            raise SdftError(f"task '{self.name}' needs lm-evaluation-harness, which is not installed: "
                            f"`{INSTALL_HINT}` (the built-in arc, hellaswag, winogrande, mmlu and "
                            f"truthfulqa tasks work offline without it)")

    def run(self, model: str, adapter: str | None, config: Any = None) -> dict:
        self.check_ready()
        from sdft.models.resolve import resolve_model

        args = self.build_arguments(resolve_model(model), adapter, config)
        import lm_eval
        try:
            output = lm_eval.simple_evaluate(**args)
        except Exception as exc:  # lm-eval's own failures (unknown task, dataset download): user's to fix
            raise SdftError(f"lm-eval failed on '{self.task_name}': {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        if not output:  # simple_evaluate returns None on non-zero ranks of a distributed run
            raise SdftError(f"lm-eval returned no results for '{self.task_name}'")
        return metrics_from_output(output, self.task_name, self.options.get("metric")) | {"settings": args}


def metrics_from_output(output: dict, task_name: str, metric: str | None = None) -> dict:
    """Our metric shape from ``simple_evaluate``'s output: the named task's (or group's) headline
    metric (``metric`` when given) with a normal 95% interval from lm-eval's standard error, and all its
    raw numbers. A group or tag without a metric of its own (``ai2_arc`` and ``truthfulqa`` are tags since
    lm-eval 0.4.3) gets the size-weighted mean of its members', as lm-eval 0.4.0 reported its groups."""
    results = output.get("results", {})
    raw = results.get(task_name) or output.get("groups", {}).get(task_name) or {}
    # lm-eval keys are "metric,filter", e.g. "acc_norm,none" and "acc_norm_stderr,none".
    values = {k: v for k, v in raw.items() if "," in k and isinstance(v, (int, float))}
    if metric and not any(k.split(",")[0] == metric for k in values):
        values.update(_group_mean(output, task_name, metric))
    if not values and task_name not in results:
        raise SdftError(f"lm-eval results hold no entry for '{task_name}' (got: {', '.join(results)})")
    names = (metric,) if metric else _HEADLINE
    fallback = None if metric else next((k for k in values if "_stderr" not in k), None)
    headline = next((k for name in names for k in values if k.split(",")[0] == name), fallback)
    if headline is None:
        raise SdftError(f"lm-eval reported no {metric or 'numeric'} metric for '{task_name}'")
    metric, filt = headline.split(",", 1)
    value = float(values[headline])
    stderr = values.get(f"{metric}_stderr,{filt}")
    ci95 = ([value - 1.96 * stderr, value + 1.96 * stderr] if isinstance(stderr, (int, float))
            else [None, None])
    n_samples = output.get("n-samples", {}).get(task_name, {})
    n = (n_samples.get("effective") if isinstance(n_samples, dict) else None) or values.pop("n,group", None)
    values.pop("n,group", None)
    headline = Metric(value, ci95, n).to_json()
    return {"metric": metric, **headline, "lm_eval": values, "metrics": {metric: headline}}


def _group_mean(output: dict, group: str, metric: str) -> dict:
    """``{metric,filter: mean, metric_stderr,filter: se, "n,group": N}`` over the group's members that
    report ``metric``, weighted by their item counts; empty when there is nothing to average."""
    results, sizes = output.get("results", {}), output.get("n-samples", {})
    # A tag has no entry in group_subtasks; every result then belongs to it (one name was run).
    members = output.get("group_subtasks", {}).get(group) or [k for k in results if k != group]
    parts = []
    for member in members:
        row = results.get(member, {})
        key = next((k for k in row if k.split(",")[0] == metric and isinstance(row[k], (int, float))), None)
        n = (sizes.get(member) or {}).get("effective")
        if key and n:
            parts.append((float(row[key]), row.get(key.replace(",", "_stderr,", 1)), int(n), key.split(",", 1)[1]))
    if not parts:
        return {}
    total = sum(n for _, _, n, _ in parts)
    filt = parts[0][3]
    out = {f"{metric},{filt}": sum(v * n for v, _, n, _ in parts) / total, "n,group": total}
    if all(isinstance(se, (int, float)) for _, se, _, _ in parts):
        out[f"{metric}_stderr,{filt}"] = sum((n * se) ** 2 for _, se, n, _ in parts) ** 0.5 / total
    return out

