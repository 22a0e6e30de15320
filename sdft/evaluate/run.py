"""One evaluation task's run inside ``sdft eval``: generate (or score log-likelihoods), cache, grade, record.

Model outputs are cached per task in ``generations/.cache/<task>-<settings key>.jsonl``
(:func:`sdft.base.layout.cache_file`) with :class:`sdft.base.store.ProgressFile`, one batch at a time; the key is
the task's :func:`sdft.base.config.stage_key`, so changed settings never mix in stale outputs. Scores are
recomputed from the cached text on every run.
"""

from __future__ import annotations

import dataclasses
from contextlib import closing
from pathlib import Path

from sdft import generation
from sdft.base import item_scores, layout
from sdft.base.config import stage_key, to_dict
from sdft.base.keys import without_old_defaults
from sdft.base.provenance import package_versions
from sdft.base.store import ProgressFile, write_jsonl
from sdft.evaluate import opening
from sdft.generation import Completion, GenerationParams
from sdft.generation.loglik import score_multiple_choice
from sdft.tasks import ExternalTask, GenerativeTask, LoglikelihoodTask, TaskContext


def task_settings(name: str, task, config, params=None, precision: str = "fp32", lora_mode: str | None = None,
                  backend: str | None = None, probe: dict | None = None) -> dict:
    """Everything that changes a task's outputs; its hash names the generation cache. ``backend`` and
    ``precision`` are the resolved ones (``sdft.generation.backend_setup``; the config keeps what was asked);
    ``lora_mode`` is set when it is keyed (``engine_key``); ``probe``: a decoding probe's settings
    (``EvalConfig.opening``), generative tasks only."""
    template = task.template
    settings = {
        "task": name, "model": config.model, "adapter": config.adapter, "backend": backend or config.backend,
        "precision": precision, "data": task.source or task.data_path, "options": {k: v for k, v in task.options.items()},
        "template": to_dict(template) if dataclasses.is_dataclass(template) else template,
        "template_mode": config.template_mode, "limit": config.limit, "n_samples": config.n_samples,
        "decoding": params.record() if params is not None else None,
    }
    if lora_mode:
        settings["lora_mode"] = lora_mode
    if probe:
        settings["opening"] = probe
    if task.revision:
        settings["revision"] = task.revision
    # Not in the key: limit (a larger limit reuses the items already done), a revision of the selection only
    # (items are cached by id, whichever items it selects; a scoring revision is keyed) and batch size (a
    # rerun with a smaller batch after running out of memory must resume, not start over).
    keyed = {k: v for k, v in settings.items()
             if k != "limit" and not (k == "revision" and task.revision_scope == "selection")}
    keyed = without_old_defaults("answer cache", keyed)
    if keyed["decoding"]:
        keyed["decoding"] = {k: v for k, v in keyed["decoding"].items() if k != "batch_size"}
    settings["settings_key"] = stage_key(keyed)
    settings["versions"] = package_versions()
    return settings


@dataclasses.dataclass
class Answers:
    """One generative task's answers: the cache they are kept in, every (item, sample) unit, and those missing."""

    name: str
    task: GenerativeTask
    params: GenerationParams
    settings: dict
    progress: ProgressFile
    units: list[tuple[dict, int, str]]  # (example, sample, cache key), in input order

    @property
    def pending(self) -> list[tuple[dict, int, str]]:
        """The units not in the cache yet."""
        return [u for u in self.units if not self.progress.done(u[2])]

    def requests(self, tokenizer) -> list[tuple[tuple[dict, int, str], str, GenerationParams]]:
        """The missing units as (unit, prompt, params), per sample the longest prompt first: batches of
        similar length pad little, and the ETA only improves."""
        pending = self.pending
        prompts = {ex["id"]: self.task.prompt(ex, tokenizer) for ex, _, _ in pending}
        out = []
        for sample in sorted({j for _, j, _ in pending}):
            params = dataclasses.replace(self.params, seed=self.params.seed + sample)
            todo = sorted((u for u in pending if u[1] == sample), key=lambda u: -len(prompts[u[0]["id"]]))
            out += [(u, prompts[u[0]["id"]], params) for u in todo]
        return out

    def save(self, answered: list[tuple[tuple[dict, int, str], str, Completion]]) -> None:
        """Append (unit, prompt, completion) answers to the cache: one write, flushed to disk."""
        self.progress.append({
            "key": key, "id": ex["id"], "sample": j, "prompt": prompt, "completion": c.text,
            "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "prompt_truncated": c.prompt_truncated,
        } for (ex, j, key), prompt, c in answered)


def plan_answers(name: str, task: GenerativeTask, examples: list[dict], session, config, out: Path) -> Answers:
    params = config.decoding(name, task.max_new_tokens, tuple(task.stop))
    engine = generation.engine_key(session.setup.record, config.adapter)
    settings = task_settings(name, task, config, params, engine["precision"], engine.get("lora_mode"), engine["backend"],
                             config.opening())
    progress = ProgressFile(layout.cache_file(out, name, settings["settings_key"]), key="key")
    # One cache unit per (item, sample); the plain id when there is one sample per item.
    units = [(ex, j, ex["id"] if config.n_samples == 1 else f"{ex['id']}#{j}")
             for j in range(config.n_samples) for ex in examples]
    return Answers(name, task, params, settings, progress, units)


def run_generate(answers: Answers, examples: list[dict], session, config, out: Path, judge=None) -> dict:
    """Generate what is missing (unless a stream over every task did), then grade and record the task."""
    if answers.pending:
        _generate(answers, session, config)
    name, task, settings = answers.name, answers.task, answers.settings
    context = TaskContext(settings["settings_key"], layout.cache_dir(out), judge, out)
    units = [answers.progress.records[key] for _, _, key in answers.units]
    records = _score(task, [ex for ex, _, _ in answers.units], units, context)
    order = {ex["id"]: i for i, ex in enumerate(examples)}
    records.sort(key=lambda r: (order[r["id"]], r.get("sample", 0)))  # input order, samples together
    write_jsonl(layout.generations_file(out, name), records)
    entry = task.aggregate([r["score"] for r in records], records, context)
    _write_item_scores(entry, out, name, item_scores.generated(records, task.verdict))
    entry["finish_length"] = sum(r.get("finish_reason") == "length" for r in records)
    entry["generations"] = layout.generations_file(out, name).relative_to(out).as_posix()
    entry["settings"] = settings
    return entry


def stream_answers(plans: list[Answers], session, config) -> dict[str, dict]:
    """Every task's missing answers in one stream through the engine (``sdft.generation.stream``): vLLM keeps
    them all in flight. Answers are saved to their task's cache as they come, a few seconds' worth per write (one
    write per answer would make the engine wait on the disk). Returns per task the answers and new tokens made."""
    from tqdm.auto import tqdm

    requests = [(answers, unit, prompt, params) for answers in plans
                for unit, prompt, params in answers.requests(session.tokenizer)]
    made = {a.name: {"answers": 0, "new_tokens": 0} for a in plans if a.pending}
    if not requests:
        return made
    chunk = max(config.batch_size, getattr(session.backend, "request_chunk", 0) or 0)
    groups = [(answers.name, unit[1]) for answers, unit, _, _ in requests]  # one task's one sample

    def save(came: list[tuple[int, object]]) -> None:
        by_task: dict[str, list] = {}
        for i, completion in came:
            answers, unit, prompt, _ = requests[i]
            by_task.setdefault(answers.name, []).append((unit, prompt, completion))
        for answers in plans:
            if by_task.get(answers.name):
                answers.save(by_task[answers.name])

    answers_of = generation.stream(session.backend, [(p, params) for _, _, p, params in requests], chunk, groups)
    with closing(generation.saved_as_they_come(answers_of, save)) as came, \
            tqdm(total=len(requests), desc="+".join(made), unit="gen", disable=not config.progress,
                 dynamic_ncols=True) as bar:
        for i, completion in came:
            name = requests[i][0].name
            made[name]["answers"] += 1
            made[name]["new_tokens"] += completion.completion_tokens
            bar.update(1)
    return made


def _generate(answers: Answers, session, config) -> None:
    """One task's missing answers, one chunk per backend call and cache write (the decoding probes' way, and
    every task's when answers are not streamed)."""
    from tqdm.auto import tqdm

    total = len(answers.units)
    bar = tqdm(total=total, initial=total - len(answers.pending), desc=answers.name, unit="gen",
               disable=not config.progress, dynamic_ncols=True)
    requests = answers.requests(session.tokenizer)
    # vLLM and servers want many prompts in flight; a chunk is one call of one sample's prompts.
    chunk = max(config.batch_size, getattr(session.backend, "request_chunk", 0) or 0)
    for start, end in generation.runs([(p, params) for _, p, params in requests], chunk):
        batch, params = requests[start:end], requests[start][2]
        completions = opening.generate(session.backend, [prompt for _, prompt, _ in batch], params,
                                       config.answer_prefix, config.forbid_opening)
        answers.save([(unit, prompt, c) for (unit, prompt, _), c in zip(batch, completions)])
        bar.update(len(batch))
    bar.close()


def _score(task: GenerativeTask, examples: list[dict], units: list[dict], context: TaskContext) -> list[dict]:
    """Grade cached completions (the task grades in batches where it can: a sandbox pool, a judge)."""
    scored = task.score_batch(examples, [u["completion"] for u in units], context)
    several = len(units) != len({u["id"] for u in units})  # n_samples > 1: say which sample
    records = []
    for unit, (score, reason) in zip(units, scored):
        rec = {"id": unit["id"], "prompt": unit["prompt"], "completion": unit["completion"],
               "score": None if score is None else float(score),  # None: the task could not score it here
               "reason": reason, "finish_reason": unit["finish_reason"],
               "prompt_tokens": unit["prompt_tokens"], "completion_tokens": unit["completion_tokens"]}
        if unit.get("prompt_truncated"):
            rec["prompt_truncated"] = True
        if several:
            rec["sample"] = unit["sample"]
        records.append(rec)
    return records


def run_loglik(name: str, task: LoglikelihoodTask, examples: list[dict], session, config, out: Path) -> dict:
    # The dtype the scoring model is loaded in (fp32 on a CPU unless bf16 is asked for by name).
    settings = task_settings(name, task, config, precision=session.loglik_precision, backend=session.setup.name)
    progress = ProgressFile(layout.cache_file(out, name, settings["settings_key"]))
    pending = [ex for ex in examples if not progress.done(ex["id"])]
    if pending:
        from tqdm.auto import tqdm

        model, tokenizer = session.hf_model_and_tokenizer()
        step = max(1, config.batch_size * 4)  # several questions per progress write; options share batches
        with tqdm(total=len(examples), initial=len(examples) - len(pending), desc=name, unit="question",
                  disable=not config.progress, dynamic_ncols=True) as bar:
            for start in range(0, len(pending), step):
                chunk = pending[start:start + step]
                progress.append(score_multiple_choice(model, tokenizer, task, chunk, batch_size=config.batch_size))
                bar.update(len(chunk))
    records = [progress.records[ex["id"]] for ex in examples]
    write_jsonl(layout.generations_file(out, name), records)
    entry = task.aggregate([r["score"] for r in records], records)
    _write_item_scores(entry, out, name, item_scores.loglik(records))
    entry["generations"] = layout.generations_file(out, name).relative_to(out).as_posix()
    entry["settings"] = settings
    return entry


def run_external(name: str, task: ExternalTask, config, out: Path) -> dict:
    """A task that runs itself (lm-eval); the per-item records it hands back (``records``) are written as
    the generations and per-item scores of a log-likelihood task are."""
    entry = dict(task.run(config.model, config.adapter, config))
    entry.setdefault("settings", {"model": config.model, "adapter": config.adapter})
    records = entry.pop("records", None)
    if records:
        write_jsonl(layout.generations_file(out, name), records)
        _write_item_scores(entry, out, name, item_scores.loglik(records))
        entry["generations"] = layout.generations_file(out, name).relative_to(out).as_posix()
    return entry


def _write_item_scores(entry: dict, out: Path, name: str, lines: list[dict]) -> None:
    """The task's per-item scores beside results.json, named in its entry. Rewritten whole from the scored
    records on every run (atomically), so a resumed or repeated evaluation leaves them complete, in item order."""
    path = layout.item_scores_file(out, name)
    write_jsonl(path, lines)
    entry["item_scores"] = path.relative_to(out).as_posix()
