"""``sdft eval``: score a model (optionally with a LoRA adapter) on benchmark tasks.

Writes, in ``out``:

* ``results.json``: per task the headline metric, its value, n, 95% interval, any further metrics, and
  the settings that produced it (model, adapter, data source, template, decoding, versions);
* ``generations/<task>.jsonl``: one line per item (per sample with ``--n-samples``): id, prompt,
  completion, score, finish_reason and the scorer's reason;
* ``item_scores/<task>.jsonl``: the same lines without any text of the prompt or answer: id, score,
  verdict where the task's reason is a label, answer length and opening format (``sdft.base.item_scores``),
  for every task that scores items (generative, judged, log-likelihood, and lm-eval's per-item samples).

Model outputs are cached per task in ``generations/.cache/<task>-<stage key>.jsonl`` (``sdft.evaluate.run``),
one batch at a time: a rerun after a crash generates only the missing items, and a rerun with identical
settings generates nothing (the model is not even loaded). Changing anything that alters outputs (model,
adapter, template mode, decoding, data) gives a new key, so stale generations are never mixed in; an
eval folder can hold several tasks, each keyed on its own. Scores are recomputed from the cached text
on every run (cheap), so a fixed checker applies without regenerating.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sdft import generation
from sdft.base import layout, provenance, templates
from sdft.base.config import to_dict
from sdft.base.errors import ConfigError, SdftError
from sdft.base.store import write_json
from sdft.evaluate.config import EvalConfig
from sdft.evaluate.run import plan_answers, run_external, run_generate, run_loglik, stream_answers
from sdft.generation import auto
from sdft.models import resolve
from sdft.tasks import ExternalTask, GenerativeTask, JudgedTask, get_task
from sdft.tasks.winrate import make_judge


class ModelSession:
    """The model under evaluation, loaded at most once, and only when some task really needs it."""

    def __init__(self, config: EvalConfig, setup):
        self.config, self.setup = config, setup  # setup: the resolved sdft.generation.BackendSetup
        self.hf_like = generation.loads_hf_weights(setup.name)
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
                self._tokenizer = resolve.load_tokenizer(self.model_path, adapter=self.config.adapter)
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
        return auto.generation_precision(self.config.precision, "hf")

    def hf_model_and_tokenizer(self):
        """Raw HF model + tokenizer for log-likelihood tasks, in :attr:`loglik_precision`, shared with the HF
        backend."""
        if self._hf is None:
            # The HF backend lends its torch model; with any other backend load one only when needed.
            backend = self.backend if self.setup.name == "hf" else self._backend
            if backend is not None and backend.model is not None:  # declared: a torch module, or None
                self._hf = (backend.model, backend.tokenizer)
            else:
                # Loaded in the recorded dtype by name: a bare default would be bf16/fp16 on a GPU.
                model = self.config.model if not self.hf_like else self.model_path
                self._hf = resolve.load_model_and_tokenizer(model, self.config.adapter, dtype=self.loglik_precision)
        return self._hf


def evaluate(config: EvalConfig) -> dict:
    """Run (or resume) every task; returns the dict also written to ``out/results.json``."""
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
        # The judge loads on first use, like the model.
        # The judge's engine is resolved as the model's is; it shares the run's precision unless it has its own backend.
        judge = make_judge(config.judge, model_name=config.judge_model, backend=config.judge_backend or config.backend,
                           precision=config.precision if not config.judge_backend else "auto",
                           batch_size=config.batch_size, template_mode=config.template_mode)
    examples, skipped = _load_examples(tasks, data, config)
    setup = generation.backend_setup(config)
    session = ModelSession(config, setup)
    results = _previous_results(out, config)
    results.update({"model": config.model, "adapter": config.adapter, "backend": setup.name,
                    "generation": setup.record, "provenance": provenance.run_record(to_dict(config))})
    for name, reason in skipped.items():  # an earlier real result for the task is worth keeping
        results["tasks"].setdefault(name, {"metric": tasks[name].metric, "skipped": reason})
    answers = {name: plan_answers(name, task, examples[name], session, config, out) for name, task in tasks.items()
               if name not in skipped and isinstance(task, GenerativeTask)}
    stream = config.stream_answers and not config.opening() and any(a.pending for a in answers.values())
    shares: dict[str, float] = {}
    results.pop("stream", None)  # an earlier session's: this session's seconds replace the tasks' own
    for name, task in tasks.items():
        if name in skipped:
            continue
        began = time.perf_counter()
        if stream and name in answers:  # at the first generative task, so earlier tasks keep their place
            stream, shares = False, _stream(answers, session, config, results)
            began = time.perf_counter()
        if isinstance(task, GenerativeTask):
            entry = run_generate(answers[name], examples[name], session, config, out, judge)
        elif isinstance(task, ExternalTask):
            entry = run_external(name, task, config, out)
        else:
            entry = run_loglik(name, task, examples[name], session, config, out)
        entry["seconds"] = round(time.perf_counter() - began + shares.get(name, 0.0), 2)
        if name in shares:
            entry["stream_seconds"] = round(shares[name], 2)
        results["tasks"][name] = entry
        results["system_prompt"] = _system_record(config, session)
        write_json(out / layout.RESULTS, results)  # after each task: finished tasks survive a crash
    return results


def _stream(answers: dict, session: ModelSession, config: EvalConfig, results: dict) -> dict[str, float]:
    """Generate every task's missing answers in one stream; record it, and return each task's share of its
    seconds by the new tokens it generated (which the task's own ``seconds`` then include)."""
    began = time.perf_counter()
    made = stream_answers(list(answers.values()), session, config)
    seconds = time.perf_counter() - began
    results["stream"] = {"tasks": made, "seconds": round(seconds, 2)}
    tokens = sum(m["new_tokens"] for m in made.values())
    return {name: seconds * (m["new_tokens"] / tokens if tokens else 1 / len(made)) for name, m in made.items()}


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
        lines.append(f"results: {Path(where) / layout.RESULTS}  per-item scores: {Path(where) / layout.ITEM_SCORES}/  "
                     f"generations: {Path(where) / layout.GENERATIONS}/")
    return "\n".join(lines)


def _pct(value) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{100 * value:.2f}"
