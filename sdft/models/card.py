"""Model cards: ``README.md`` in Hugging Face's format beside every adapter and merged model sdft writes, so
that ``huggingface-cli upload USER/NAME FOLDER`` publishes a card that says what the model is.

The card is made from the folder's own records (``train.json``; for an interpolated adapter ``interp.json``
and the ``train.json`` of the adapter it scaled): YAML front matter (``base_model``, ``library_name``,
``tags`` with ``sdft`` and the arm, ``datasets``, and ``model-index`` once the model has been evaluated)
and a body with the data file and its SHA-256, the method and arm, the settings that shaped the weights,
the training loss, and the evaluation results (with the seed model's beside them) when there are some.
``sdft train`` writes it when training ends; ``sdft run`` rewrites it after evaluating the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sdft.base import layout
from sdft.base.stats import Metric
from sdft.models.aliases import ALIASES


def refresh(folder: str | Path, *, label: str | None = None, results: dict | None = None,
            baseline: dict | None = None) -> list[Path]:
    """Write (or rewrite) the card of the model in ``folder`` and of its ``merged/`` copy, from the records
    in the folder; ``results`` / ``baseline``: the model's and the seed's ``results.json``. A file whose text
    is unchanged is left alone. Returns the cards written; none for a folder without a training record."""
    folder = Path(folder)
    record, interp = _records(folder)
    if record is None:
        return []
    written = []
    for target, merged in ((folder, False), (folder / layout.MERGED, True)):
        if merged and not (target / "config.json").is_file():
            continue
        text = card_text(record, merged=merged, label=label or folder.name, interp=interp, results=results,
                         baseline=baseline)
        path = target / layout.MODEL_CARD
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _records(folder: Path) -> tuple[dict | None, dict | None]:
    """``(train.json, interp.json)`` behind the model in ``folder`` (the scaled adapter's own training)."""
    interp = _read(folder / layout.INTERP_RECORD)
    source = Path(interp["source_adapter"]) if interp and interp.get("source_adapter") else folder
    return _read(source / layout.TRAIN_RECORD), interp


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def card_text(record: dict, *, merged: bool = False, label: str = "model", interp: dict | None = None,
              results: dict | None = None, baseline: dict | None = None) -> str:
    """The card of a model trained as ``record`` (a ``train.json``) says."""
    config = record.get("config") or {}
    arm = arm_name(record, interp)
    adapter = config.get("method") != "full" and not merged
    base, base_note = base_model(config.get("model", ""))
    meta: dict = {}
    if base:
        meta.update(base_model=base, base_model_relation="adapter" if adapter else "finetune")
    meta.update(library_name="peft" if adapter else "transformers", pipeline_tag="text-generation",
                tags=_unique(["sdft", arm, config.get("method", "lora"), "merged" if merged else None,
                              "wise-ft" if interp else None, "trl" if not interp else None]),
                datasets=[dataset_name(record)])
    metrics = layout.task_metrics(results or {})
    if metrics:
        meta["model-index"] = _model_index(label, metrics)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    body = [f"# {label}", "", _summary(config, arm, merged, interp, base_note), "",
            *_training(record, config, interp), *_evaluation(metrics, layout.task_metrics(baseline or {}), results),
            *_usage(config, base, adapter)]
    return f"---\n{front}---\n\n" + "\n".join(body).rstrip() + "\n"


def arm_name(record: dict, interp: dict | None = None) -> str:
    """The arm that made the model, in ``sdft run``'s names: vanilla (the data's own responses), sdft (the
    seed's rewrites), mix<R>, onpolicy, each +replay when replay examples were mixed in; interp."""
    if interp:
        return "interp"
    data, config = record.get("data") or {}, record.get("config") or {}
    if config.get("objective") == "onpolicy":
        name = "onpolicy"
    elif data.get("distilled") and data.get("mix_ratio") not in (None, 0, 0.0):
        ratio = data["mix_ratio"]
        name = "sdft" if ratio == 1 else f"mix{ratio:g}"
    else:
        name = "vanilla"
    if data.get("replay_examples"):
        return "replay" if name == "vanilla" else f"{name}+replay"
    return name


def base_model(model: str) -> tuple[str | None, str]:
    """``(hub id for base_model, note)``. An alias is the hub model its GGUF was made from (the note says
    which weights sdft trained on); a hub id is itself; a local folder has no hub id to name."""
    if model in ALIASES:
        origin = ALIASES[model].origin
        hub = origin.split(",")[0].split(" (")[0].strip()
        return hub, (f"The base weights are sdft's offline alias `{model}` ({origin}), dequantized: it was "
                     f"trained and measured on those weights (`sdft eval --model {model} --adapter FOLDER`), "
                     "not on the original ones.")
    if model.count("/") == 1 and not Path(model).exists() and not model.startswith((".", "/")):
        return model, ""
    return None, f"The base model is the local folder `{model}` (no hub id is known for it)."


def _name(path: str | None) -> str:
    """A data file by its name (a card is published: the folders of this machine say nothing there)."""
    return Path(path).name if path and (Path(path).suffix or Path(path).exists()) else str(path)


def dataset_name(record: dict) -> str:
    """The training data by name: the file the run started from (the user's file behind a ``distilled.jsonl``,
    from the distillation's run.json), or the hub dataset's id."""
    path = _original_data(record).get("path") or (record.get("data") or {}).get("path") or "unknown"
    return Path(path).name if Path(path).suffix or Path(path).exists() else path.split(":")[0]


def _original_data(record: dict) -> dict:
    """``{"path", "sha256"}`` of the data a distilled training file was made from ({} for plain data)."""
    data = record.get("data") or {}
    if not data.get("distilled") or not data.get("path"):
        return {}
    distill_run = _read(Path(data["path"]).parent / layout.RUN_RECORD) or {}
    return distill_run.get("data") if isinstance(distill_run.get("data"), dict) else {}


def _unique(items: list) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _model_index(label: str, metrics: dict[str, Metric]) -> list[dict]:
    by_task: dict[str, list] = {}
    for name, metric in metrics.items():
        task, _, what = name.partition("/")
        by_task.setdefault(task, []).append({"type": what, "value": round(float(metric.value), 6), "name": name})
    return [{"name": label, "results": [{"task": {"type": "text-generation"},
                                         "dataset": {"name": task, "type": task}, "metrics": found}
                                        for task, found in by_task.items()]}]


def _summary(config: dict, arm: str, merged: bool, interp: dict | None, note: str) -> str:
    what = {"vanilla": "fine-tuned on the training data's own responses",
            "sdft": "fine-tuned on the seed model's own rewrites of the training responses (self-distillation "
                    "fine-tuning, Yang et al. 2024)",
            "onpolicy": "trained by on-policy self-distillation (the model, shown the target response, teaches "
                        "itself token by token; Shenfeld et al. 2026)",
            "interp": "the vanilla fine-tune's LoRA change scaled toward the seed (WiSE-FT interpolation)"}
    kind = ("Full weights (a LoRA adapter merged into" if merged
            else "A LoRA adapter (for" if config.get("method") != "full" else "Full weights (of")
    core = "vanilla" if arm == "replay" else arm.split("+")[0]  # replay: vanilla plus replayed examples
    text = (f"{kind} `{config.get('model')}`), "
            f"{what.get(core, 'fine-tuned on a mix of rewrites and original responses')}"
            f"{' plus replayed general examples' if '+replay' in arm or arm == 'replay' else ''}; made with "
            f"sdft, the Self-Distillation Fine-Tuning toolkit (arm `{arm}`).")
    if interp:
        source = Path(interp.get("source_adapter", "")).name
        text += (f" Its lora_B weights are those of the vanilla adapter `{source}` times alpha = "
                 f"{interp.get('alpha')} (0 = the seed model, 1 = vanilla); the training below is vanilla's.")
    return text + (f"\n\n{note}" if note else "")


def _training(record: dict, config: dict, interp: dict | None) -> list[str]:
    data, training = record.get("data") or {}, record.get("training") or {}
    original = _original_data(record)
    rows = [("arm / method", f"{arm_name(record, interp)} / {config.get('method')} (objective "
                             f"{config.get('objective', 'sft')})")]
    if original:
        rows.append(("data", f"`{_name(original.get('path'))}` (sha256 `{original.get('sha256')}`), distilled by "
                             f"the seed model into `{_name(data.get('path'))}` (sha256 `{data.get('sha256')}`)"))
    else:
        rows.append(("data", f"`{_name(data.get('path'))}` (sha256 `{data.get('sha256')}`)"))
    mix = f" (mix ratio {data['mix_ratio']:g})" if data.get("mix_ratio") is not None else ""
    replayed = f", {data['replay_examples']} replay" if data.get("replay_examples") else ""
    rows += [("examples", f"{data.get('examples')}: {data.get('rewritten', 0)} rewritten, {data.get('original', 0)} "
                          f"original targets{replayed}{mix}"),
             ("steps", f"{training.get('steps')} ({training.get('epochs')} epochs, global batch "
                       f"{training.get('global_batch')}, {training.get('precision')}, seed {config.get('seed')})"),
             ("optimizer", f"learning rate {config.get('learning_rate')}, {config.get('lr_scheduler')} schedule, "
                           f"warmup {config.get('warmup_ratio')}, weight decay {config.get('weight_decay')}")]
    if config.get("method") != "full":
        rows.append(("LoRA", f"r {config.get('lora_r')}, alpha {config.get('lora_alpha')}, dropout "
                             f"{config.get('lora_dropout')}, targets {', '.join(config.get('lora_targets') or [])}"))
    template = record.get("template") or {}
    rows += [("prompt", f"template `{template.get('name')}` ({template.get('mode')}), max length "
                        f"{config.get('max_length')}, system prompt `{config.get('system_prompt')}`")]
    losses = record.get("loss") or []
    if losses:
        rows.append(("loss", f"{losses[0]['loss']:.4f} -> {record.get('final_loss'):.4f}"))
    versions = record.get("versions") or {}
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)))
    return ["## Training", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _evaluation(metrics: dict[str, Metric], seed: dict[str, Metric], results: dict | None) -> list[str]:
    if not metrics:
        return []

    def cell(m: Metric | None) -> str:
        if m is None:
            return "–"
        interval = f" [{m.ci95[0]:.3f}, {m.ci95[1]:.3f}]" if m.ci95 else ""
        return f"{m.value:.3f}{interval}" + (f" (n {m.n})" if m.n else "")
    lines = ["## Evaluation", "", "Measured by `sdft eval` (95% intervals; settings and answers in its "
             f"`{layout.RESULTS}`).", "", "| task / metric | this model | seed model |", "|---|---|---|"]
    lines += [f"| {name} | {cell(m)} | {cell(seed.get(name))} |" for name, m in metrics.items()]
    return lines + [""]


def _usage(config: dict, base: str | None, adapter: bool) -> list[str]:
    model = base or config.get("model")
    code = (["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'base = AutoModelForCausalLM.from_pretrained("{model}")',
             'model = PeftModel.from_pretrained(base, "THIS_FOLDER_OR_REPO")']
            if adapter else ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                             'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER_OR_REPO")'])
    code.append('tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER_OR_REPO")')
    return ["## Use", "", "```python", *code, "```", ""]
