"""Stage 1 of SDFT: the seed model rewrites each target response in its own words.

For every example the distillation template shows the instruction and the original response as a
"reference answer"; the seed model writes its own response; a filter decides whether that rewrite replaces
the original (otherwise the original is kept). Output, in ``out``:

* ``distilled.jsonl``: each input record, in input order, response replaced when the rewrite was
  accepted, plus ``"sdft": {id, accepted, reason, rewrite, original, finish_reason, ...}``;
* ``stats.json``: counts per reason, acceptance rate, tokens, tokens/s, wall time;
* ``run.json``: everything that changes the result (model, template text, decoding, filter, seed, data
  hash, versions, command); ``stage.json``: the stage key (:func:`sdft.config.stage_key`).

Progress is appended to ``progress.jsonl`` after every batch, so a rerun of the same command after Ctrl-C
or ``kill -9`` resumes where it stopped and never duplicates or drops a record (the resume policy of
:func:`sdft.layout.claim_stage`: another key in the same folder is refused).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sdft import layout, templates
from sdft.config import (DEFAULT_MODEL, IF_SET, TaskKind, Validated, column_mapping, field, keyed_settings,
                         stage_key, to_dict)
from sdft.errors import ConfigError
from sdft.generation import EngineSettings, GenerationParams, engine_key
from sdft.store import ProgressFile, write_json, write_jsonl
from sdft.train_data import seeded_subset

# The reference code never sets decoding values; these are the defaults it inherited (paper-method §4).
PRESETS = {
    "paper": {"temperature": 0.95, "top_p": 0.7, "top_k": 50, "max_new_tokens": 512,
              "max_prompt_tokens": 1024, "truncation_side": "right", "seed": 42, "filter_mode": "paper",
              "input_separator": "\n", "template_mode": "plain",  # the reference rendered prompts as text
              "system_prompt": "template"},
}


@dataclass
class DistillConfig(EngineSettings, Validated):
    data: str = field(None, "dataset file (JSON, JSONL, CSV, Parquet) or hub dataset name")
    out: str = field("runs/distill", "output folder (rerun the same command to resume)", keyed=False)
    model: str = field(DEFAULT_MODEL, "seed model: alias, hub id, local folder or .gguf file")
    adapter: str | None = field(None, "optional LoRA adapter folder on top of the model")
    task: TaskKind = field("general", "task kind: picks the template and the filter")
    template: str | None = field(None, "distillation template preset (using, refer, math) or YAML/JSON file")
    template_mode: templates.Mode = field("auto", "render through the chat template (chat) or as plain text")
    system_prompt: str = field(templates.DEFAULT_SYSTEM_PROMPT, templates.SYSTEM_PROMPT_HELP)
    filter: str | None = field(None, "filter kind, or a user filter 'module:function' (default: the task's)")
    filter_mode: Literal["default", "paper"] = field("default", "'paper' reproduces the reference code's rules")
    shape: str = field("auto", "data shape: auto, alpaca, gsm8k, sharegpt, messages")
    columns: list[str] = field(default_factory=list, help="column mapping, e.g. instruction=prompt,response=answer")
    limit: int | None = field(None, "distil only the first N examples (with sample_seed: a seeded random N)")
    sample_seed: int | None = field(None, "with limit: a seeded random subset of N, kept in file order, instead "
                                          "of the first N (a file sorted by source would bias the first N)",
                                    keyed=IF_SET)
    batch_size: int = field(8, "prompts per generation batch")
    max_new_tokens: int = field(512, "generation budget per rewrite")
    max_prompt_tokens: int = field(1024, "longer prompts are cut (and reported)")
    truncation_side: Literal["left", "right"] = field(
        "left", "which end of a too-long prompt is cut (right: the reference code's, loses '### Response:')")
    input_separator: str = field("\n\n", "joins an alpaca instruction and its input (reference code: one newline)")
    temperature: float = field(0.0, "0 = greedy decoding (our default); the paper sampled at 0.95")
    top_p: float = field(1.0, "nucleus sampling threshold (sampling only)")
    top_k: int = field(0, "top-k sampling (0 = off; sampling only)")
    seed: int = field(42, "random seed for sampling")
    progress: bool = field(True, "show a progress bar", keyed=False)

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("distill needs --data (a dataset file or hub name)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("'limit' must be at least 1")
        if self.sample_seed is not None and self.limit is None:
            raise ConfigError("'sample_seed' picks a random subset of 'limit' examples: set 'limit' too")
        generation_params(self)  # decoding values are checked where they are defined
        column_mapping(self.columns)
        templates.check_system_prompt(self.system_prompt)
        self.check_engine_settings()  # a backend option no backend takes: refused before any model loads


def generation_params(config) -> GenerationParams:
    return GenerationParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            top_p=config.top_p, top_k=config.top_k, seed=config.seed,
                            batch_size=config.batch_size, max_prompt_tokens=config.max_prompt_tokens,
                            truncation_side=config.truncation_side)


def _run_record(config: DistillConfig, template: templates.Template, mode: str, model_path: str,
                tokenizer, generation: dict) -> dict:
    from sdft import provenance
    data_path = Path(config.data)
    record = {
        "model": {"name": config.model, "path": model_path, "source": _model_source(model_path)},
        "adapter": config.adapter,
        "data": {"path": str(data_path),
                 "sha256": provenance.file_sha256(data_path) if data_path.is_file() else None},
        "template": to_dict(template),
        "template_mode": mode,
        "system_prompt": templates.describe_system(config.system_prompt, tokenizer, mode, template),
        "decoding": generation_params(config).record(),
        "filter": {"kind": config.filter or config.task, "mode": config.filter_mode},
        "limit": config.limit, "sample_seed": config.sample_seed, "columns": config.columns, "shape": config.shape,
        "generation": generation,
    }
    if config.input_separator != "\n\n":  # recorded when set (the stage key covers it either way)
        record["input_separator"] = config.input_separator
    # The key covers what the config names and what its names point to now (file contents, template text).
    # The engine as resolved (auto -> vllm or hf, its precision, a merged adapter) changes the text: keyed too.
    engine = engine_key(generation, config.adapter)
    record["settings_key"] = stage_key(config, record["data"]["sha256"], record["template"], mode, engine)
    if (config.filter or config.task) == "code":  # where rewrites' code ran (not part of the key)
        from sdft import sandbox

        record["sandbox"] = sandbox.record()
    return provenance.run_record(to_dict(config), **record)


def _model_source(model_path: str) -> dict | None:
    """The embedded model records where it came from (GGUF file and checksum)."""
    from sdft.models import SOURCE_FILE
    source = Path(model_path) / SOURCE_FILE
    return json.loads(source.read_text()) if source.is_file() else None


def _refuse_unkeyed_progress(out: Path) -> None:
    """Progress left by a version before stage keys has no key to compare: never mix it into this run."""
    if (out / layout.DISTILL_PROGRESS).exists() and layout.read_stage(out) is None:
        raise ConfigError(f"{out} holds distillation progress without a stage key (an earlier sdft version); "
                          "use another --out, or delete that folder to start over")


def distill(config: DistillConfig) -> dict:
    """Run (or resume) distillation; returns the statistics also written to ``stats.json``."""
    from sdft.data import load_examples
    from sdft.filters import make_filter
    from sdft.generation import backend_setup

    # Everything that can fail on bad input fails here, before the model is loaded.
    examples = load_examples(config.data, shape=config.shape, columns=column_mapping(config.columns),
                             limit=config.limit if config.sample_seed is None else None,
                             input_separator=config.input_separator)
    if config.sample_seed is not None:
        examples = seeded_subset(examples, config.limit, config.sample_seed)
    template = templates.load_template(config.template or templates.DEFAULT_DISTILL[config.task], "distill")
    accept = make_filter(config.filter or config.task, mode=config.filter_mode)
    out = Path(config.out)
    setup = backend_setup(config)
    backend = setup.load(config.adapter, progress=False)  # we draw the bar
    tokenizer = backend.tokenizer  # declared by every backend (None: plain prompts)
    mode = templates.resolve_mode(config.template_mode, tokenizer) if tokenizer is not None else "plain"
    run = _run_record(config, template, mode, setup.model_path, tokenizer, setup.record)
    settings = keyed_settings(config)
    _refuse_unkeyed_progress(out)
    layout.claim_stage(out, run["settings_key"], settings)
    write_json(out / layout.RUN_RECORD, run)

    progress = ProgressFile(out / layout.DISTILL_PROGRESS)
    prompts = {ex.id: templates.render(template, ex.instruction, reference=ex.response, tokenizer=tokenizer,
                                       mode=mode, history=ex.history, system_prompt=config.system_prompt)
               for ex in examples if not progress.done(ex.id)}
    _generate_pending(examples, prompts, backend, accept, progress, config)
    stats = _finish(examples, progress, out)
    layout.finish_stage(out, run["settings_key"], settings, stats)
    return stats


def _generate_pending(examples, prompts, backend, accept, progress: ProgressFile, config) -> None:
    from tqdm.auto import tqdm

    params = generation_params(config)
    # Longest-first across the whole job: batches hold similar lengths (little padding) and the
    # slowest batches come first, so the ETA only improves.
    pending = sorted((ex for ex in examples if ex.id in prompts), key=lambda ex: -len(prompts[ex.id]))
    bar = tqdm(total=len(examples), initial=len(examples) - len(pending), desc="distill",
               unit="ex", disable=not config.progress, dynamic_ncols=True)
    chunk = max(config.batch_size, getattr(backend, "request_chunk", 0) or 0)  # vLLM/servers: more in flight
    for start in range(0, len(pending), chunk):
        batch = pending[start:start + chunk]
        began = time.perf_counter()
        completions = backend.generate([prompts[ex.id] for ex in batch], params)
        share = (time.perf_counter() - began) / len(batch)
        progress.append(_progress_record(ex, c, prompts[ex.id], accept, share)
                        for ex, c in zip(batch, completions))
        bar.update(len(batch))
    bar.close()


def _progress_record(example, completion, prompt: str, accept, seconds: float) -> dict:
    rewrite = completion.text.strip()
    completion.text = rewrite
    decision = accept(example, completion, prompt)
    return {"id": example.id, "accepted": decision.accepted, "reason": decision.reason,
            "detail": decision.detail, "rewrite": rewrite, "finish_reason": completion.finish_reason,
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "prompt_truncated": completion.prompt_truncated, "seconds": seconds}


def _finish(examples, progress: ProgressFile, out: Path) -> dict:
    from sdft.data import with_response

    records = []
    for ex in examples:
        p = progress.records[ex.id]
        record = with_response(ex, p["rewrite"] if p["accepted"] else ex.response)
        record["sdft"] = {"id": ex.id, "accepted": p["accepted"], "reason": p["reason"],
                          "rewrite": p["rewrite"], "original": ex.response,
                          "finish_reason": p["finish_reason"]}
        records.append(record)
    write_jsonl(out / layout.DISTILLED, records)
    stats = _stats([progress.records[ex.id] for ex in examples])
    stats["output"] = str(out / layout.DISTILLED)
    write_json(out / layout.DISTILL_STATS, stats)
    return stats


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
    return (f"distilled {stats['examples']} examples: {stats['accepted']} rewrites accepted "
            f"({stats['acceptance_rate']:.0%}; {reasons}); {stats['tokens_per_second']} new tokens/s\n"
            f"wrote {stats['output']} (and stats.json, run.json beside it)")
