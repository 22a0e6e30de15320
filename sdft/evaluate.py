"""``sdft eval``: score a model (optionally with a LoRA adapter) on benchmark tasks.

Writes, in ``out``:

* ``results.json``: per task the headline metric, its value, n, 95% interval, any further metrics, and
  the settings that produced it (model, adapter, data source, template, decoding, versions);
* ``generations/<task>.jsonl``: one line per item (per sample with ``--n-samples``): id, prompt,
  completion, score, finish_reason and the scorer's reason.

Model outputs are cached per task in ``generations/.cache/<task>-<stage key>.jsonl`` (``sdft.eval_run``),
one batch at a time: a rerun after a crash generates only the missing items, and a rerun with identical
settings generates nothing (the model is not even loaded). Changing anything that alters outputs (model,
adapter, template mode, decoding, data) gives a new key, so stale generations are never mixed in; an
eval folder can hold several tasks, each keyed on its own. Scores are recomputed from the cached text
on every run (cheap), so a fixed checker applies without regenerating.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sdft import layout, templates
from sdft.config import DEFAULT_MODEL, Validated, field, to_dict
from sdft.errors import ConfigError, SdftError
from sdft.generation import EngineSettings
from sdft.store import write_json
from sdft.tasks import ExternalTask, GenerativeTask, JudgedTask

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
class EvalConfig(EngineSettings, Validated):
    model: str = field(DEFAULT_MODEL, "model: alias, hub id, local folder or .gguf file")
    adapter: str | None = field(None, "optional LoRA adapter folder on top of the model")
    tasks: list[str] = field(default_factory=list, help="tasks, comma-separated: gsm8k, multiarith, openfunctions, bfcl, humaneval, advbench, "
                                 "advbench-jailbreak, winrate, alpaca_eval, arc, hellaswag, winogrande, mmlu, truthfulqa, "
                                 "lm_eval:<task>, or a user task (--data and --checker)")
    out: str = field("runs/eval", "output folder (rerun the same command to resume)", keyed=False)
    limit: int | None = field(None, "evaluate only the first N items of each task")
    max_new_tokens: int | None = field(None, "generation budget per answer (default: each task's own)")
    max_prompt_tokens: int = field(2048, "longer prompts are cut (and reported)")
    truncation_side: Literal["left", "right"] = field(
        "left", "which end of a too-long prompt is cut (right: the reference code's, loses '### Response:')")
    batch_size: int = field(8, "prompts per generation batch")
    data: list[str] = field(default_factory=list, help="TASK=PATH: a task's data file or hub name (repeatable)")
    checker: list[str] = field(default_factory=list, help="TASK=module:function for a user task (with --data)")
    option: list[str] = field(default_factory=list, help="TASK.KEY=VALUE task option, e.g. openfunctions.rule=paper")
    template_mode: templates.Mode = field("auto", "chat template (chat), plain text (plain), or auto")
    system_prompt: str = field(templates.DEFAULT_SYSTEM_PROMPT, templates.SYSTEM_PROMPT_HELP)
    temperature: float = field(0.0, "0 = greedy decoding")
    greedy_tasks: list[str] = field(default_factory=list, help="tasks decoded greedily whatever --temperature "
                                    "(the paper preset: humaneval, as the reference's bigcode harness did)")
    top_p: float = field(1.0, "nucleus sampling threshold (sampling only)")
    top_k: int = field(0, "top-k sampling (0 = off; sampling only)")
    n_samples: int = field(1, "samples per item (needs temperature > 0); HumanEval reports pass@k from them")
    seed: int = field(42, "random seed for sampling (sample j uses seed + j)")
    judge: str | None = field(None, "winrate judge: a model our backends load, or an OpenAI-compatible URL")
    judge_model: str | None = field(None, "model name to request from a judge endpoint URL")
    judge_backend: str | None = field(None, "backend that loads a local judge (default: --backend)")
    progress: bool = field(True, "show a progress bar", keyed=False)

    def validate(self) -> None:
        from sdft.tasks import TASK_PREFIXES, TASKS, task_class

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
        self.decoding()  # decoding values are checked where they are defined
        if self.n_samples > 1 and self.temperature <= 0:
            raise ConfigError("--n-samples above 1 needs --temperature above 0 (greedy samples are identical)")
        if "winrate" in self.tasks and not self.judge:
            raise ConfigError("task winrate needs --judge (a model, or an OpenAI-compatible endpoint URL)")
        if self.judge and self.judge.startswith(("http://", "https://")):
            from sdft.endpoint import api_key, check_url
            check_url(self.judge, has_key=bool(api_key()))  # before anything is written or loaded
        templates.check_system_prompt(self.system_prompt)
        self.check_engine_settings()  # a backend option no backend takes: refused before any model loads

    def decoding(self, task: str | None = None, task_budget: int = 256, stop: tuple[str, ...] = ()):
        """The :class:`GenerationParams` of a task: its own answer budget unless --max-new-tokens is set,
        greedy when it is one of --greedy-tasks."""
        from sdft.generation import GenerationParams
        return GenerationParams(
            max_new_tokens=task_budget if self.max_new_tokens is None else self.max_new_tokens,
            temperature=0.0 if task in self.greedy_tasks else self.temperature, top_p=self.top_p, top_k=self.top_k,
            seed=self.seed, batch_size=self.batch_size, max_prompt_tokens=self.max_prompt_tokens,
            truncation_side=self.truncation_side, stop=stop)

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


class ModelSession:
    """The model under evaluation, loaded at most once, and only when some task really needs it."""

    def __init__(self, config: EvalConfig, setup):
        self.config, self.setup = config, setup  # setup: the resolved sdft.generation.BackendSetup
        from sdft.generation import loads_hf_weights
        self.hf_like = loads_hf_weights(setup.name)
        self._backend = self._tokenizer = self._hf = None

    @property
    def model_path(self) -> str:
        return self.setup.model_path

    @property
    def backend(self):
        if self._backend is None:
            # Our own bar counts items across the task; a backend's inner bar would only add noise.
            self._backend = self.setup.load(self.config.adapter, progress=False)
        return self._backend

    @property
    def tokenizer(self):
        """For rendering prompts; a bare tokenizer load is cheap, so the model waits until it generates."""
        if self._tokenizer is None:
            if self._backend is None and self.hf_like:
                from sdft.models import load_tokenizer
                self._tokenizer = load_tokenizer(self.model_path, adapter=self.config.adapter)
            else:
                self._tokenizer = self.backend.tokenizer
        return self._tokenizer

    @property
    def loglik_precision(self) -> str:
        """fp32 or bf16: the dtype log-likelihoods are scored in, known before any model loads (it keys their
        cache). The HF backend's own when it lends its model; otherwise ``--precision`` resolved as for HF
        generation (auto: fp32 on a CPU, where HF bf16 was not faster; bf16 on a GPU)."""
        if self.setup.name == "hf":
            return self.setup.record["precision"]
        from sdft.generation.auto import generation_precision
        return generation_precision(self.config.precision, "hf")

    def hf_model_and_tokenizer(self):
        """Raw HF model + tokenizer for log-likelihood tasks, in :attr:`loglik_precision`, shared with the HF
        backend."""
        if self._hf is None:
            # The HF backend lends its torch model; with any other backend load one only when needed.
            backend = self.backend if self.setup.name == "hf" else self._backend
            if backend is not None and backend.model is not None:  # declared: a torch module, or None
                self._hf = (backend.model, backend.tokenizer)
            else:
                from sdft.models import load_model_and_tokenizer
                # Loaded in the recorded dtype by name: a bare default would be bf16/fp16 on a GPU.
                self._hf = load_model_and_tokenizer(self.config.model if not self.hf_like else self.model_path,
                                                    self.config.adapter, dtype=self.loglik_precision)
        return self._hf


def evaluate(config: EvalConfig) -> dict:
    """Run (or resume) every task; returns the dict also written to ``out/results.json``."""
    from sdft import provenance
    from sdft.eval_run import run_generate, run_loglik
    from sdft.tasks import get_task

    out = Path(config.out)
    data, checkers, options = config.data_paths(), config.checkers(), config.task_options()
    # Build every task first: bad names, options and data files fail before any model is loaded.
    tasks = {}
    for name in config.tasks:
        opts = {"template_mode": config.template_mode, "system_prompt": config.system_prompt,
                **options.get(name, {})}
        if name in checkers:
            opts["checker"] = checkers[name]
        tasks[name] = get_task(name, data.get(name), **opts)
        tasks[name].check_ready()  # e.g. lm_eval: a missing package fails now, not hours in
    judge = None
    if any(isinstance(t, JudgedTask) for t in tasks.values()):
        from sdft.tasks.winrate import make_judge  # the judge loads on first use, like the model
        judge = make_judge(config.judge, model_name=config.judge_model, backend=config.judge_backend or config.backend,
                           batch_size=config.batch_size, template_mode=config.template_mode)
    examples, skipped = _load_examples(tasks, data, config)
    from sdft.generation import backend_setup
    setup = backend_setup(config)
    config = dataclasses.replace(config, backend=setup.name)  # the settings keys name the backend that ran
    session = ModelSession(config, setup)
    results = _previous_results(out, config)
    results.update({"model": config.model, "adapter": config.adapter, "backend": config.backend,
                    "generation": setup.record, "provenance": provenance.run_record(to_dict(config))})
    for name, reason in skipped.items():  # an earlier real result for the task is worth keeping
        results["tasks"].setdefault(name, {"metric": tasks[name].metric, "skipped": reason})
    for name, task in tasks.items():
        if name in skipped:
            continue
        began = time.perf_counter()
        if isinstance(task, GenerativeTask):
            entry = run_generate(name, task, examples[name], session, config, out, judge)
        elif isinstance(task, ExternalTask):
            entry = dict(task.run(config.model, config.adapter, config))
            entry.setdefault("settings", {"model": config.model, "adapter": config.adapter})
        else:
            entry = run_loglik(name, task, examples[name], session, config, out)
        entry["seconds"] = round(time.perf_counter() - began, 2)
        results["tasks"][name] = entry
        results["system_prompt"] = _system_record(config, session)
        write_json(out / layout.RESULTS, results)  # after each task: finished tasks survive a crash
    return results


def _system_record(config: EvalConfig, session: ModelSession) -> dict:
    """The --system-prompt choice and the text it stood for (a tokenizer load is cheap; an engine is not)."""
    tokenizer = session.tokenizer if session.hf_like else session._tokenizer
    mode = templates.resolve_mode(config.template_mode, tokenizer) if tokenizer is not None else config.template_mode
    return templates.describe_system(config.system_prompt, tokenizer, mode)


def _previous_results(out: Path, config: EvalConfig) -> dict:
    """Keep other tasks' results from an earlier eval of the same model in the same folder."""
    try:
        old = json.loads((out / layout.RESULTS).read_text())
    except (OSError, json.JSONDecodeError):
        return {"tasks": {}}
    same = old.get("model") == config.model and old.get("adapter") == config.adapter
    return {**old, "tasks": dict(old.get("tasks", {}))} if same else {"tasks": {}}


def _load_examples(tasks: dict, data: dict, config: EvalConfig) -> tuple[dict, dict]:
    """Every task's examples, loaded before any model: ``(examples, skipped)``.

    A task whose *default* source is missing here (no carrier installed, hub unreachable, no bundled
    data) is skipped with its reason, so the other tasks of a long run still get done; a file the user
    named with --data that cannot be read stops the run, since that is a mistake to fix first.
    """
    examples, skipped = {}, {}
    for name, task in tasks.items():
        if isinstance(task, ExternalTask):
            continue
        try:
            examples[name] = _examples(name, task, config)
        except SdftError as exc:
            if name in data:
                raise
            skipped[name] = str(exc)
            print(f"sdft eval: skipping task {name}: {exc}", file=sys.stderr)
    if len(skipped) == len(tasks):
        raise ConfigError("no task can run: " + "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    return examples, skipped


def _examples(name: str, task, config: EvalConfig) -> list[dict]:
    examples = task.examples()
    if config.limit is not None:
        examples = examples[:config.limit]
    seen: set[str] = set()
    for ex in examples:
        if ex["id"] in seen:
            raise ConfigError(f"task '{name}': duplicate example id '{ex['id']}' in its data")
        seen.add(ex["id"])
    if not examples:
        raise ConfigError(f"task '{name}' has no examples")
    return examples


def summarize(result: dict) -> str:
    """A table: one row per task and metric, value and 95% interval in percent."""
    rows = [("task", "metric", "value", "95% interval", "n")]
    for name, entry in result.get("tasks", {}).items():
        if "skipped" in entry:
            reason = entry["skipped"]
            rows.append((name, entry.get("metric", ""), "skipped", reason[:90] + "..." * (len(reason) > 90), ""))
            continue
        for metric, m in entry.get("metrics", {entry.get("metric", "?"): entry}).items():
            low, high = (m.get("ci95") or [None, None])[:2]
            rows.append((name, metric, _pct(m.get("value")),
                         f"[{_pct(low)}, {_pct(high)}]" if low is not None else "", str(m.get("n", ""))))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    where = result.get("provenance", {}).get("config", {}).get("out")
    if where:
        lines.append(f"results: {Path(where) / layout.RESULTS}  generations: {Path(where) / layout.GENERATIONS}/")
    return "\n".join(lines)


def _pct(value) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{100 * value:.2f}"
