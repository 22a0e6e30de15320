"""Stage 1 of SDFT: the seed model rewrites each target response in its own words.

For every example the distillation template shows the instruction and the original response as a
"reference answer"; the seed model writes its own response; a filter decides whether that rewrite replaces
the original (otherwise the original is kept). Output, in ``out``:

* ``distilled.jsonl``: each input record, in input order, response replaced when the rewrite was
  accepted, plus ``"sdft": {id, accepted, reason, rewrite, original, finish_reason, ...}``;
* ``stats.json``: counts per reason, acceptance rate, tokens, tokens/s, wall time;
* ``run.json``: everything that changes the result (model, template text, decoding, filter, seed, data
  hash, versions, command); ``stage.json``: the stage key (:func:`sdft.base.config.stage_key`).

With ``--format-guard`` or ``--self-answer`` (:mod:`sdft.distill.formats`) the seed also answers each prompt
under the task's prompt (``self_answers.jsonl``, a second resumable pass); the guard rejects rewrites whose
opening or length differs from that answer, self-answer mode trains on it where it passes the filter, and
``sdft`` blocks, ``stats.json`` and ``run.json`` carry the answers and the counts.

Progress is appended to ``progress.jsonl`` after every batch, so a rerun of the same command after Ctrl-C
or ``kill -9`` resumes where it stopped and never duplicates or drops a record (the resume policy of
:func:`sdft.base.layout.claim_stage`: another key in the same folder is refused).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

from sdft import generation, sandbox
from sdft.base import layout, provenance, templates
from sdft.base.config import column_mapping, keyed_settings, stage_key, to_dict
from sdft.base.data import load_examples, seeded_subset, with_response
from sdft.base.errors import ConfigError
from sdft.base.store import ProgressFile, write_json, write_jsonl
from sdft.distill import formats
from sdft.distill import turns as distill_turns
from sdft.distill.config import DistillConfig
from sdft.distill.filters import make_filter
from sdft.generation import engine_key
from sdft.models import resolve


def _run_record(config: DistillConfig, template: templates.Template, mode: str, model_path: str,
                tokenizer, generation: dict, answer: templates.Template | None = None) -> dict:
    data_path = Path(config.data)
    record = {
        "model": {"name": config.model, "path": model_path, "source": _model_source(model_path)},
        "adapter": config.adapter,
        "data": {"path": str(data_path),
                 "sha256": provenance.file_sha256(data_path) if data_path.is_file() else None},
        "template": to_dict(template),
        "template_mode": mode,
        "system_prompt": templates.describe_system(config.system_prompt, tokenizer, mode, template),
        "decoding": config.generation_params().record(),
        "filter": {"kind": config.filter or config.task, "mode": config.filter_mode},
        "limit": config.limit, "sample_seed": config.sample_seed, "columns": config.columns, "shape": config.shape,
        "generation": generation,
    }
    if config.input_separator != "\n\n":  # recorded when set (the stage key covers it either way)
        record["input_separator"] = config.input_separator
    # The key covers what the config names and what its names point to now (file contents, template text).
    # The engine as resolved (auto -> vllm or hf, its precision, a merged adapter) changes the text: keyed too.
    engine = engine_key(generation, config.adapter)
    inputs = [record["data"]["sha256"], record["template"], mode, engine]
    if answer is not None:  # the seed's own answers (format guard, self-answer): keyed only then, keys stay
        record.update(formats.settings(config, answer))
        inputs.append(record["answer_template"])
    record["settings_key"] = stage_key(config, *inputs)
    if (config.filter or config.task) == "code":  # where rewrites' code ran (not part of the key)
        record["sandbox"] = sandbox.record()
    return provenance.run_record(to_dict(config), **record)


def _model_source(model_path: str) -> dict | None:
    """The embedded model records where it came from (GGUF file and checksum)."""
    source = Path(model_path) / resolve.SOURCE_FILE
    return json.loads(source.read_text()) if source.is_file() else None


def _refuse_unkeyed_progress(out: Path) -> None:
    """Progress left by a version before stage keys has no key to compare: never mix it into this run."""
    if (out / layout.DISTILL_PROGRESS).exists() and layout.read_stage(out) is None:
        raise ConfigError(f"{out} holds distillation progress without a stage key (an earlier sdft version); "
                          "use another --out, or delete that folder to start over")


def distill(config: DistillConfig) -> dict:
    """Run (or resume) distillation; returns the statistics also written to ``stats.json``."""
    # Everything that can fail on bad input fails here, before the model is loaded.
    examples = load_examples(config.data, shape=config.shape, columns=column_mapping(config.columns),
                             limit=config.limit if config.sample_seed is None else None,
                             input_separator=config.input_separator)
    if config.sample_seed is not None:
        examples = seeded_subset(examples, config.limit, config.sample_seed)
    template = templates.load_template(config.template or templates.DEFAULT_DISTILL[config.task], "distill")
    accept = distill_turns.checking_calls(make_filter(config.filter or config.task, mode=config.filter_mode))
    out = Path(config.out)
    setup = generation.backend_setup(config)
    backend = setup.load(config.adapter, progress=False)  # we draw the bar
    tokenizer = backend.tokenizer  # declared by every backend (None: plain prompts)
    mode = templates.resolve_mode(config.template_mode, tokenizer) if tokenizer is not None else "plain"
    answer = formats.answer_template(config) if config.needs_self_answers else None
    run = _run_record(config, template, mode, setup.model_path, tokenizer, setup.record, answer)
    settings = keyed_settings(config)
    _refuse_unkeyed_progress(out)
    layout.claim_stage(out, run["settings_key"], settings)
    write_json(out / layout.RUN_RECORD, run)

    progress = ProgressFile(out / layout.DISTILL_PROGRESS)
    # Every assistant turn to rewrite is a unit of its own (an example's last turn keeps its id).
    work = [unit for ex in examples for unit in distill_turns.units(ex, config.rewrite_turns)]
    prompts = {unit.id: distill_turns.prompt(unit, template, tokenizer, mode, config.system_prompt)
               for unit in work if not progress.done(unit.id)}
    _generate_pending(work, prompts, backend, progress, config, "distill",
                      lambda ex, completion, prompt, seconds: _progress_record(ex, completion, prompt, accept, seconds))
    own = None
    if answer is not None:  # the second pass: the seed's own answers to the task's prompts
        own = ProgressFile(out / layout.DISTILL_SELF_ANSWERS)
        asked = formats.prompts(examples, answer, tokenizer, mode, config.system_prompt, lambda i: not own.done(i))
        _generate_pending(examples, asked, backend, own, config, "own answers",
                          lambda ex, completion, prompt, seconds: _progress_record(ex, completion, prompt, accept,
                                                                                   seconds, own=True))
    stats = _finish(examples, progress, own, out, config)
    if own is not None:  # the counts join the settings the record already holds
        write_json(out / layout.RUN_RECORD, _with_counts(run, stats))
    layout.finish_stage(out, run["settings_key"], settings, stats)
    return stats


def _generate_pending(examples, prompts, backend, progress: ProgressFile, config, desc: str, record) -> None:
    """Generate the pending ``prompts``, in one stream (``config.stream_answers``, on a backend that keeps requests
    in flight: vLLM) or chunk by chunk, saved after each; ``record(example, completion, prompt, seconds)`` is what
    ``progress`` keeps of each."""
    from tqdm.auto import tqdm

    params = config.generation_params()
    # Longest-first across the whole job: batches hold similar lengths (little padding) and the
    # slowest batches come first, so the ETA only improves.
    pending = sorted((ex for ex in examples if ex.id in prompts), key=lambda ex: -len(prompts[ex.id]))
    chunk = max(config.batch_size, getattr(backend, "request_chunk", 0) or 0)  # vLLM/servers: more in flight
    with tqdm(total=len(examples), initial=len(examples) - len(pending), desc=desc, unit="ex",
              disable=not config.progress, dynamic_ncols=True) as bar:
        if config.stream_answers and generation.streams(backend):
            _stream_pending(pending, prompts, backend, progress, params, chunk, record, bar)
            return
        for start in range(0, len(pending), chunk):
            batch = pending[start:start + chunk]
            began = time.perf_counter()
            completions = backend.generate([prompts[ex.id] for ex in batch], params)
            share = (time.perf_counter() - began) / len(batch)
            progress.append(record(ex, c, prompts[ex.id], share) for ex, c in zip(batch, completions))
            bar.update(len(batch))


def _stream_pending(pending, prompts, backend, progress: ProgressFile, params, chunk: int, record, bar) -> None:
    """Every pending prompt in one stream, saved a few seconds' worth at a time. Each answer's ``seconds`` is
    the wall time since the one before it came back, so that they add up to the stream's time. ``groups``: the
    chunks the other path would make, which draw the same sampling seeds."""
    requests = [(prompts[ex.id], params) for ex in pending]
    groups = [i // chunk for i in range(len(pending))]
    last = [time.perf_counter()]

    def timed(answers):
        with closing(answers):  # stopped early: the stream aborts what it has in flight
            for i, completion in answers:
                now = time.perf_counter()
                yield pending[i], completion, now - last[0]
                last[0] = now

    def save(came: list) -> None:
        progress.append(record(ex, completion, prompts[ex.id], seconds) for ex, completion, seconds in came)

    answers = timed(generation.stream(backend, requests, chunk, groups))
    with closing(generation.saved_as_they_come(answers, save)) as came:
        for _ in came:
            bar.update(1)


def _progress_record(example, completion, prompt: str, accept, seconds: float, own: bool = False) -> dict:
    """A rewrite and the filter's verdict; ``own``: the seed's own answer and whether it passes the same filter."""
    text = completion.text.strip()
    completion.text = text
    decision = accept(example, completion, prompt)
    verdict, kept = ("passed", "answer") if own else ("accepted", "rewrite")
    return {"id": example.id, verdict: decision.accepted, "reason": decision.reason,
            "detail": decision.detail, kept: text, "finish_reason": completion.finish_reason,
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "prompt_truncated": completion.prompt_truncated, "seconds": seconds}


def _finish(examples, progress: ProgressFile, own: ProgressFile | None, out: Path, config) -> dict:
    records, done, done_turns = [], [], []
    for ex in examples:
        p, mine = progress.records[ex.id], own.records[ex.id] if own is not None else None
        verdict = formats.decide(p, mine, config)
        target = formats.target(ex, p["rewrite"], verdict, mine)
        record = with_response(ex, target)
        record["sdft"] = {"id": ex.id, "accepted": verdict["accepted"], "reason": verdict["reason"],
                          "rewrite": p["rewrite"], "original": ex.response,
                          "finish_reason": p["finish_reason"]}
        earlier = distill_turns.units(ex, config.rewrite_turns)[:-1]
        if earlier:  # only then: distilled files of single-turn data stay as they were
            record["sdft"]["turns"] = [distill_turns.turn_record(u, progress.records[u.id]) for u in earlier]
            done_turns += [progress.records[u.id] for u in earlier]
        if mine is not None:  # only then: distilled files without own answers stay as they were
            record["sdft"].update(detail=verdict["detail"], self_answer=mine["answer"],
                                  self_answer_reason=mine["reason"])
            if "source" in verdict:  # self-answer mode: training reads the target from here
                record["sdft"].update(source=verdict["source"], target=target)
        records.append(record)
        done.append({**p, **verdict})
    write_jsonl(out / layout.DISTILLED, records)
    stats = _stats(done)
    if done_turns:  # earlier assistant turns: counted apart, so that the counts above stay per example
        stats["earlier_turns"] = {"rewritten": len(done_turns), "accepted": sum(r["accepted"] for r in done_turns),
                                  "reasons": dict(Counter(r["reason"] for r in done_turns).most_common())}
    if own is not None:
        stats.update(formats.counts(done, [own.records[ex.id] for ex in examples], config))
    stats["output"] = str(out / layout.DISTILLED)
    write_json(out / layout.DISTILL_STATS, stats)
    return stats


def _with_counts(run: dict, stats: dict) -> dict:
    """run.json with the mode's counts beside its settings."""
    run = {**run, "self_answers": stats["self_answers"]}
    if "format_guard" in stats:
        run["format_guard"] = {**run["format_guard"], "rejected": stats["format_guard"]}
    if "sources" in stats:
        run["self_answer"] = {**run["self_answer"], "sources": stats["sources"]}
    return run


def _stats(done: list[dict]) -> dict:
    seconds = sum(r["seconds"] for r in done)
    new_tokens = sum(r["completion_tokens"] for r in done)
    accepted = sum(r["accepted"] for r in done)
    return {
        "examples": len(done),
        "accepted": accepted,
        "acceptance_rate": accepted / len(done) if done else 0.0,
        "reasons": dict(Counter(r["reason"] for r in done).most_common()),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in done)),
        "prompts_truncated": sum(r["prompt_truncated"] for r in done),
        "prompt_tokens": sum(r["prompt_tokens"] for r in done),
        "completion_tokens": new_tokens,
        "generation_seconds": round(seconds, 2),
        "tokens_per_second": round(new_tokens / seconds, 2) if seconds else None,
    }


def summarize(stats: dict) -> str:
    reasons = ", ".join(f"{k}: {v}" for k, v in stats["reasons"].items())
    own = stats.get("self_answers")
    extra = (f"; the seed's own answers passed the filter {own['passed']} times" if own else "") + (
        "; targets: " + ", ".join(f"{k} {v}" for k, v in stats["sources"].items()) if "sources" in stats else "")
    return (f"distilled {stats['examples']} examples: {stats['accepted']} rewrites accepted "
            f"({stats['acceptance_rate']:.0%}; {reasons}){extra}; {stats['tokens_per_second']} new tokens/s\n"
            f"wrote {stats['output']} (and stats.json, run.json beside it)")
