"""``lm_eval:<task>``: hand a benchmark over to EleutherAI's lm-evaluation-harness (the ``lm-eval`` extra).

The model is passed as lm-eval's ``hf`` model with ``pretrained=<local folder>`` (our aliases and GGUF files
resolved first, so lm-eval never needs the hub for the weights), ``peft=<adapter>`` and the dtype
``--precision`` names (``auto``: fp32 on a CPU, the model's own on a GPU; see :func:`_dtype`). The prompt goes
through the model's chat template (lm-eval's ``apply_chat_template``) when the task's template mode resolves
to chat (``auto``: the tokenizer has one), with the ``--system-prompt`` choice as lm-eval's
``system_instruction``. Tasks named in ``sdft.tasks.lm_eval_local`` (``sdft_arc_easy``, ...) read the offline
carriers' data through a task file written into the eval folder; any other name is lm-eval's own task (its
data from the hub).

The metrics come back in the shape of :meth:`Task.aggregate` (``metric``, ``value``, ``ci95``, ``n``) plus
lm-eval's raw numbers; lm-eval's per-item samples (``log_samples``) come back as ``records`` in the shape
of our log-likelihood records, which the evaluation stage writes as the generations and per-item scores.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from sdft.base import templates
from sdft.base.errors import ConfigError, SdftError
from sdft.base.stats import Metric
from sdft.generation import auto
from sdft.models import resolve
from sdft.tasks import ExternalTask, lm_eval_local

INSTALL_HINT = "pip install -e '.[lm-eval]'"  # what make setup installs
# Which of lm-eval's metrics is the headline one, first present wins (acc_norm where lm-eval reports it,
# as leaderboards quote it for ARC and HellaSwag).
_HEADLINE = ("acc_norm", "acc", "exact_match", "pass@1", "f1", "mc2", "bleu", "word_perplexity")
_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


class LMEvalTask(ExternalTask):
    """Any lm-eval task (or group) by name, e.g. ``lm_eval:hellaswag`` or ``lm_eval:mmlu``; offline,
    ``lm_eval:sdft_arc_easy`` (and the other :data:`sdft.tasks.lm_eval_local.LOCAL_TASKS`).

    Options: ``num_fewshot`` (lm-eval's default when unset), ``dtype`` (e.g. ``float32``; default: from
    ``--precision``, see :func:`_dtype`), ``metric`` (the headline metric, e.g. ``acc``: the paper reports
    lm-eval's ``acc`` for ARC and TruthfulQA), ``template_mode`` and ``system_prompt`` (the eval-wide ones,
    for this task alone).
    """

    metric = "lm_eval"
    option_spec = {"num_fewshot": int, "dtype": None, "metric": None,
                   "template_mode": ("auto", "chat", "plain"), "system_prompt": None}

    def __init__(self, data_path: str | None = None, task_name: str = "", **options: Any):
        super().__init__(data_path, **options)
        if not task_name:
            raise ConfigError("lm_eval: name the lm-evaluation-harness task, e.g. lm_eval:hellaswag")
        if data_path:
            raise ConfigError(f"lm_eval:{task_name} reads its data through lm-eval; --data does not apply")
        self.task_name = task_name
        self.name = f"lm_eval:{task_name}"
        fewshot = options.get("num_fewshot")
        lm_eval_local.check_fewshot(task_name, int(fewshot) if fewshot is not None else None)

    def build_arguments(self, model_path: str, adapter: str | None, config: Any = None,
                        tokenizer: Any = None) -> dict:
        """Keyword arguments for ``lm_eval.simple_evaluate`` (kept separate so they can be checked);
        ``tokenizer``: the model's, to decide on the chat template (None: plain text)."""
        model_args: dict[str, Any] = {"pretrained": str(model_path)}
        if adapter:
            model_args["peft"] = str(adapter)
            if (Path(adapter) / "tokenizer_config.json").is_file():
                # Training saves the tokenizer beside the adapter; use it, as sdft.models.resolve does.
                model_args["tokenizer"] = str(adapter)
        dtype = self.options.get("dtype") or _dtype(config)
        if dtype:
            model_args["dtype"] = str(dtype)
        args: dict[str, Any] = {
            "model": "hf",
            # A dict, not lm-eval's "k=v,k=v" string: a comma in a folder name would split the string.
            "model_args": model_args,
            "tasks": [self.task_name],
            "batch_size": getattr(config, "batch_size", None) or 8,
            "log_samples": True,  # per-item results: our generations and item_scores files
            **self._chat_arguments(tokenizer),
        }
        if getattr(config, "limit", None) is not None:
            args["limit"] = config.limit
        # lm-eval's own default is "cuda", which fails on a machine without one.
        args["device"] = getattr(config, "device", None) or _device()
        if self.options.get("num_fewshot") is not None:
            args["num_fewshot"] = int(self.options["num_fewshot"])
        return args

    def _chat_arguments(self, tokenizer) -> dict:
        """lm-eval's ``apply_chat_template`` and ``system_instruction`` from our template mode and system
        prompt choice (``model`` and ``template``: the chat template's own default, as lm-eval's tasks have no
        system text of their own; ``none``: refused where the template writes a default, since lm-eval drops an
        empty system message and the default would appear)."""
        mode = self.options.get("template_mode", "auto")
        if tokenizer is None or templates.resolve_mode(mode, tokenizer) == "plain":
            return {"apply_chat_template": False}  # lm-eval would prepend a system text as plain text: none
        choice = self.options.get("system_prompt", templates.DEFAULT_SYSTEM_PROMPT)
        if choice == "none" and templates.model_default_system(tokenizer):
            raise ConfigError(f"{self.name}: system_prompt none cannot reach lm-eval (it drops an empty system "
                              f"message, so the chat template writes its default); use --option "
                              f"{self.name}.system_prompt=model or {self.name}.template_mode=plain")
        if choice in ("model", "template", "none"):
            return {"apply_chat_template": True}
        return {"apply_chat_template": True, "system_instruction": choice}

    def check_ready(self) -> None:
        """Called before any model loads, so a long run does not stop hours in for a missing package."""
        if not lm_eval_available():
            raise SdftError(f"task '{self.name}' needs lm-evaluation-harness, which is not installed: "
                            f"`{INSTALL_HINT}` (the built-in arc, hellaswag, winogrande, mmlu and "
                            f"truthfulqa tasks work offline without it)")

    def run(self, model: str, adapter: str | None, config: Any = None) -> dict:
        self.check_ready()
        model_path = resolve.resolve_model(model)
        args = self.build_arguments(model_path, adapter, config, resolve.load_tokenizer(model_path, adapter=adapter))
        manager, source = self._task_manager(config)
        import lm_eval
        try:
            output = lm_eval.simple_evaluate(**args, task_manager=manager)
        except Exception as exc:  # lm-eval's own failures (unknown task, dataset download): user's to fix
            hint = ("" if lm_eval_local.is_local(self.task_name) else
                    f" (offline, tasks on local data: {', '.join(lm_eval_local.LOCAL_TASKS)})")
            raise SdftError(f"lm-eval failed on '{self.task_name}': {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}{hint}") from None
        if not output:  # simple_evaluate returns None on non-zero ranks of a distributed run
            raise SdftError(f"lm-eval returned no results for '{self.task_name}'")
        entry = metrics_from_output(output, self.task_name, self.options.get("metric"))
        settings = {**args, "lm_eval_version": _version(), **({"data": source} if source else {})}
        return entry | {"settings": settings, "records": sample_records(output.get("samples") or {},
                                                                        entry["metric"])}

    def _task_manager(self, config: Any):
        """lm-eval's TaskManager: for our local tasks, only the task file written into the eval folder
        (indexing lm-eval's thousands of task files takes seconds and is not needed)."""
        from lm_eval.tasks import TaskManager

        if not lm_eval_local.is_local(self.task_name):
            return TaskManager(), None
        if getattr(config, "out", None) is None:
            raise ConfigError(f"{self.name}: needs an eval folder (--out) for its task file")
        folder, source = lm_eval_local.write_task_file(self.task_name, Path(config.out))
        return TaskManager(include_path=str(folder), include_defaults=False), source


def _dtype(config: Any) -> str | None:
    """``--precision`` as lm-eval's dtype. ``auto`` on a GPU: None, lm-eval's own ``auto`` (the model's
    dtype, fp16 for Llama-2-7b-chat), which is what the reference code's ``lm_eval --model hf`` ran; on a CPU
    fp32, as our own log-likelihood tasks (a bf16 model config would otherwise be scored slowly in bf16)."""
    precision = getattr(config, "precision", None)
    if precision is None or (precision == "auto" and auto.cuda_available()):
        return None
    return _DTYPES.get(auto.generation_precision(precision, "hf"))


def _device() -> str:
    return "cuda" if auto.cuda_available() else "cpu"


def _version() -> str | None:
    from importlib import metadata
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return None


def sample_records(samples: dict[str, list[dict]], metric: str) -> list[dict]:
    """lm-eval's per-item samples as our log-likelihood records (``sdft.generation.loglik``'s shape: id,
    prompt, options, summed log-likelihoods, ``chosen`` = their argmax, acc / acc_norm, ``score`` = the
    headline metric), in document order. Ids: the record's own ``id`` where each is unique, else lm-eval's
    ``doc_id``; prefixed with the subtask's name when a group ran several."""
    records = []
    for subtask, rows in samples.items():
        rows = sorted(rows, key=lambda s: s["doc_id"])
        own = [str(s.get("doc", {}).get("id", "")) for s in rows]
        unique = all(own) and len(set(own)) == len(own)
        for s, item in zip(rows, own):
            item = item if unique else str(s["doc_id"])
            records.append(_record(s, f"{subtask}/{item}" if len(samples) > 1 else item, metric))
    return records


def _record(sample: dict, item: str, metric: str) -> dict:
    pairs = [tuple(a) for a in sample.get("arguments", [])]
    responses = sample.get("filtered_resps", [])
    scores = [float(r[0]) for r in responses if isinstance(r, (list, tuple)) and r]
    rec: dict[str, Any] = {"id": item, "doc_id": sample["doc_id"]}
    if scores and len(scores) == len(pairs):  # a multiple-choice item: one (context, option) per choice
        contexts = [c for c, _ in pairs]
        chosen = max(range(len(scores)), key=lambda i: scores[i])  # first maximum, like numpy.argmax
        rec.update(prompt=contexts[0] if len(set(contexts)) == 1 else contexts,
                   continuations=[c for _, c in pairs], completion=pairs[chosen][1], gold=sample.get("target"),
                   logprobs=scores, chosen=chosen)
    elif responses:  # a generated answer
        rec.update(prompt=pairs[0][0] if pairs else None, completion=str(responses[0]))
    for key in ("acc", "acc_norm"):
        if isinstance(sample.get(key), (int, float)):
            rec[key] = float(sample[key])
    value = sample.get(metric)
    rec["score"] = float(value) if isinstance(value, (int, float)) else None
    return rec


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
    n_samples = output.get("n-samples", {}).get(task_name, {})
    n = (n_samples.get("effective") if isinstance(n_samples, dict) else None) or values.pop("n,group", None)
    values.pop("n,group", None)
    # The headline first, then lm-eval's other metrics of the same filter (acc beside acc_norm), as our own
    # multiple-choice tasks report them.
    others = [k.split(",")[0] for k in values if k.endswith(f",{filt}") and "_stderr" not in k and k != headline]
    metrics = {name: _metric(values, name, filt, n) for name in [metric, *others]}
    return {"metric": metric, **metrics[metric], "lm_eval": values, "metrics": metrics}


def _metric(values: dict, name: str, filt: str, n: int | None) -> dict:
    value, stderr = float(values[f"{name},{filt}"]), values.get(f"{name}_stderr,{filt}")
    ci95 = ([value - 1.96 * stderr, value + 1.96 * stderr] if isinstance(stderr, (int, float))
            else [None, None])
    return Metric(value, ci95, n).to_json()


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

