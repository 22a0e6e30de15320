"""The experiment report: ``report.md`` and a self-contained ``report.html`` (plots embedded).

Built only from files a run saved (the :class:`sdft.base.layout.Manifest` and the stage folders it names), so
``sdft report RUN_DIR`` can rebuild it at any time without a model, from run folders of every version.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

from sdft.base import item_scores, layout, seeds
from sdft.base.errors import ConfigError
from sdft.base.layout import Arm, Manifest
from sdft.base.seed_stats import seed_mean, seed_variance
from sdft.base.stats import Metric
from sdft.base.store import read_jsonl, write_text
from sdft.report import cost as report_cost
from sdft.report import distillation as report_distillation
from sdft.report import openings as report_openings
from sdft.report import paired, plots
from sdft.report.config import ReportConfig
from sdft.report.tables import section as _section
from sdft.report.tables import table as _table


def build_report(config: ReportConfig) -> dict:
    if not config.run_dir or not (Path(config.run_dir) / layout.MANIFEST).is_file():
        raise ConfigError(f"'{config.run_dir}' is not a finished run folder (no {layout.MANIFEST}); "
                          "run `sdft run CONFIG.yaml` first")
    return {k: str(v) for k, v in write_report(Path(config.run_dir)).items()}


def summarize(paths: dict) -> str:
    return f"report: {paths['md']}\n        {paths['html']}"


# ---------------------------------------------------------------- formatting

def _fmt(value, scale: float = 100.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * scale:.1f}"


def _ci(metric: Metric) -> str:
    ci = metric.ci95
    return f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci and None not in ci else ""


# ---------------------------------------------------------------- sections

def results_section(manifest: Manifest) -> str:
    per_model = {label: arm.metrics() for label, arm in manifest.arms.items()}
    columns = sorted({k for metrics in per_model.values() for k in metrics})
    seed = per_model.get("seed", {})
    rows, borrowed = [], _borrowed_metrics(manifest, per_model, columns)
    for name, members in seeds.groups(manifest.arms.values()).items():
        if len(members) == 1:
            rows.append([members[0].label, *_model_cells(members[0].label, per_model[members[0].label], columns, seed)])
        else:
            rows.append([f"{name} ({len(members)} seeds)",
                         *_seed_mean_cells([per_model[m.label] for m in members], columns, seed, borrowed)])
    n = {col: next((m[col].n for m in per_model.values() if col in m), "?") for col in columns}
    note = ("Scores in %, 95% interval in brackets, change vs seed in parentheses. "
            "Items per task: " + ", ".join(f"{c}: {n[c]}" for c in columns) + ".")
    text = "## Results\n\n" + _table(["model", *columns], rows) + "\n\n" + note + "\n"
    if not seeds.several(manifest):
        return text
    return (text[:-1] + " " + SEED_NOTE + "\n\n" +
            _section("Results per training seed", ["model", "training seed", "model folder", *columns],
                     [[arm.label, "–" if arm.seed is None else arm.seed, _folder(arm),
                       *_model_cells(arm.label, per_model[arm.label], columns, seed)]
                      for members in seeds.groups(manifest.arms.values()).values() for arm in members],
                     "Each model on its own: score in %, 95% interval over the evaluation items in brackets, "
                     "change vs seed in parentheses. The model folder holds its training (or interpolation) "
                     "record; its evaluation is the eval folder of the same label."))


# Why this interval: sdft.base.seed_stats.seed_mean, docs/statistics.md.
SEED_NOTE = ("Rows marked (N seeds): the arm trained at N training seeds; mean over seeds, then a 95% interval in "
             "brackets that adds the training-seed variance of a model's score (borrowed from every arm of the run "
             "trained at several seeds except interp, t quantile with its degrees of freedom) and the item sampling "
             "of one seed's score (the widest per-seed interval), so it is never narrower than one seed's "
             "interval; change of the mean vs seed in parentheses, then each seed's score in seed order (per-item "
             "intervals: the per-seed table below).")


def _model_cells(label: str, metrics: dict[str, Metric], columns: list[str], seed: dict[str, Metric]) -> list[str]:
    """One model's cells: score [per-item interval] (change vs seed)."""
    cells = []
    for col in columns:
        entry = metrics.get(col)
        if not entry:
            cells.append("–")
            continue
        cell = _fmt(entry.value) + _ci(entry)
        if label != "seed" and col in seed and entry.value is not None and seed[col].value is not None:
            cell += f" ({(entry.value - seed[col].value) * 100:+.1f})"
        cells.append(cell)
    return cells


def _seed_mean_cells(per_seed: list[dict[str, Metric]], columns: list[str], seed: dict[str, Metric],
                     borrowed: dict[str, dict]) -> list[str]:
    """One arm over its seeds: mean [interval over seeds and items] (change vs seed); seeds' scores. No
    interval rather than a zero-width one (neither a seed spread nor per-seed intervals to build it from)."""
    cells = []
    for col in columns:
        values = [m[col].value for m in per_seed if col in m and m[col].value is not None]
        if len(values) < len(per_seed):  # a seed without this metric: a mean of the rest would mislead
            cells.append("–")
            continue
        over = seed_mean(values, [m[col].ci95 for m in per_seed], borrowed.get(col, {"variance": None, "df": 0}))
        mean = over["mean"]
        cell = _fmt(mean) + (f" [{_fmt(over['ci95'][0])}, {_fmt(over['ci95'][1])}]" if over["ci95"] else "")
        if col in seed and seed[col].value is not None:
            cell += f" ({(mean - seed[col].value) * 100:+.1f})"
        cells.append(cell + "; seeds " + ", ".join(_fmt(v) for v in values))
    return cells


def _borrowed_metrics(manifest: Manifest, per_model: dict[str, dict[str, Metric]], columns: list[str]) -> dict:
    """``{column: seed_variance}`` of the models' scores, over the arms the paired section borrows from. An arm
    whose seeds score exactly the same is left out (seed_variance's rule for a model the seed did not touch);
    with whole-model scores such a tie may be chance, and leaving it out only widens the interval."""
    out = {}
    for col in columns:
        found = {name: {m.label: [per_model[m.label][col].value] for m in members
                        if col in per_model[m.label] and per_model[m.label][col].value is not None}
                 for name, members in paired.borrow_groups(manifest).items()}
        out[col] = seed_variance({name: by_model for name, by_model in found.items() if len(by_model) > 1})
    return out


def _folder(arm: Arm) -> str:
    record = arm.train or arm.eval
    return "/".join(Path(record.dir).parts[-2:])


def shift_section(manifest: Manifest) -> str:
    rows, baseline = [], None
    for label, arm in manifest.arms.items():
        if not arm.answer_shift and not arm.weight_shift:
            continue
        text, params = arm.answer_shift or {}, arm.weight_shift or {}
        likelihood = text.get("seed_likelihood", {})
        baseline = likelihood.get("reference", {}).get("mean", baseline)
        for task, metrics in [("all", text.get("overall", {})), *text.get("tasks", {}).items()]:
            nll = likelihood if task == "all" else likelihood.get("tasks", {}).get(task, {})
            rows.append([label, task, *(_mean_ci(metrics.get(k, {})) for k in ("bleu4", "rouge_l", "embedding_cosine")),
                         _mean_ci(nll), _num(params.get("total")) if task == "all" else ""])
    if not rows:
        return ""
    seed_nll = f" The seed's own NLL on them is {_num(baseline)}." if baseline is not None else ""
    return _section("Distribution shift vs the seed model",
                    ["model", "answers to", "BLEU-4", "ROUGE-L F", "embedding cosine", "seed answers NLL/token",
                     "parameter shift (L2)"], rows,
                    "Similarities compare each model's greedy answers with the seed model's answers to the same "
                    "prompts (0-1, 1 = identical; mean and 95% interval). Seed NLL is the mean per-token negative "
                    "log-likelihood, under the fine-tuned model, of the seed's own greedy answers (lower = closer "
                    f"to the seed).{seed_nll} Parameter shift is the L2 norm of the weight change.")


def cost_section(manifest: Manifest, run_dir: Path, generations: dict) -> str:
    """What each model cost, stage by stage, and the evaluation's seconds per task where recorded."""
    header, rows, caption = report_cost.cost_table(manifest, run_dir, generations)
    text = _section("Cost per model", header, rows, caption)
    per_task = report_cost.task_seconds_table(manifest)
    if per_task:
        text += ("\n" + _table(*per_task) + "\n\nEvaluation seconds per task: generation and scoring in the session "
                 "that last ran the task (answers found in a cache cost next to nothing there; answers generated in "
                 "one stream for every task count each task's share of it, by the new tokens it generated).\n")
    return text


def load_generations(manifest: Manifest, run_dir: Path) -> dict[str, dict[str, tuple[dict, list[dict]]]]:
    """``{model label: {task: (results entry, answer records)}}``: each task's per-item lines as measured
    (lengths and openings, no text: :func:`item_scores.as_answer_records`), else, in folders evaluated before
    those existed, its generation records. An archived run (no generations) loses nothing here."""
    return {label: _generations(arm, run_dir) for label, arm in manifest.arms.items()}


def _generations(arm: Arm, run_dir: Path) -> dict[str, tuple[dict, list[dict]]]:
    eval_dir = arm.eval.path(run_dir)
    found = {}
    for task, entry in arm.eval.result.get("tasks", {}).items():
        lines = eval_dir / str(entry.get("item_scores") or "")
        path = eval_dir / str(entry.get("generations") or "")
        if entry.get("item_scores") and lines.is_file():
            found[task] = (entry, item_scores.as_answer_records(read_jsonl(lines)))
        elif entry.get("generations") and path.is_file():
            found[task] = (entry, read_jsonl(path))
    return found


def length_section(generations: dict) -> str:
    """How long each model answers: fine-tuning on terse targets shortens answers, on the seed's own
    rewrites much less; answers cut at the token budget can fail a task for length alone."""
    per_model = {label: {task: records for task, (_, records) in found.items()
                         if records and all("completion_tokens" in r for r in records)}
                 for label, found in generations.items()}
    tasks = sorted({t for found in per_model.values() for t in found})
    if not tasks:
        return ""
    rows = []
    for label, found in per_model.items():
        cells = [label]
        for task in tasks:
            records = found.get(task)
            if not records:
                cells.append("–")
                continue
            tokens = sum(r["completion_tokens"] for r in records) / len(records)
            cut = sum(r.get("finish_reason") == "length" for r in records) / len(records)
            cells.append(f"{tokens:.1f} ({cut:.0%})")
        rows.append(cells)
    return _section("Answer length", ["model", *tasks], rows,
                    "Mean new tokens per answer, and in parentheses the share of answers stopped by the "
                    "evaluation's token budget rather than ending on their own.")


def openings_section(records: list[dict], generations: dict) -> str:
    found = report_openings.openings(records, generations)
    if found is None:
        return ""
    text = f"## How answers open\n\n{report_openings.INTRO}\n"
    if found.targets:
        text += "\n" + _table(["training targets", "opens with"], found.targets) + "\n"
        text += "".join(f"\n{note}\n" for note in found.notes)
    if found.models:
        text += "\n" + _table(["model", *found.tasks], found.models) + "\n"
    return text


def _mean_ci(metric: dict) -> str:
    if metric.get("mean") is None:
        return "–"
    ci = metric.get("ci95")
    return f"{metric['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")


def _num(value) -> str:
    return "–" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------- assembly

def write_report(run_dir: Path) -> dict[str, Path]:
    manifest = Manifest.read(run_dir)
    images = plots.make_plots(manifest, run_dir)
    generations = load_generations(manifest, run_dir)
    distilled = report_distillation.distilled_records(manifest, run_dir)
    scores = paired.load_scores(manifest, run_dir, generations)  # per-item files; generations in older folders
    parts = [f"# SDFT report: {manifest.name}\n",
             (f"Seed model `{manifest.model}`, training data `{manifest.data}` (task kind "
              f"{manifest.task}){_system_line(manifest)}. Every stage's settings are in its folder's "
              f"`{layout.STAGE}` and `{layout.RUN_RECORD}`.\n"),
             results_section(manifest), paired.paired_section(manifest, scores),
             paired.seed_section(manifest, scores),
             report_distillation.distill_section(manifest, distilled, run_dir),
             openings_section(distilled, generations),
             length_section(generations), shift_section(manifest),
             cost_section(manifest, run_dir, generations)]
    if images:
        parts.append("## Plots\n\n" + "\n\n".join(f"![{title}]({layout.PLOTS}/{path.name})"
                                                     for title, path in images))
        if seeds.several(manifest):
            parts[-1] += ("\n\nAn arm trained at several seeds is one point (or bar) at its mean over seeds, with "
                          "error bars from the lowest to the highest seed; other bars show their 95% per-item "
                          "interval. The loss plot has one line per trained model.")
    markdown_text = "\n".join(p for p in parts if p)
    md_path = run_dir / layout.REPORT_MD
    write_text(md_path, markdown_text)  # whole: an archive may be taken while a run rewrites its report
    html_path = run_dir / layout.REPORT_HTML
    write_text(html_path, _html(markdown_text, run_dir, manifest.name))
    return {"md": md_path, "html": html_path}


def _system_line(manifest: Manifest) -> str:
    """The --system-prompt of each stage (it decides, e.g., whether a chat model refuses at all)."""
    chosen = manifest.system_prompt  # empty for runs made before the option existed
    if not chosen:
        return ""
    if len(set(chosen.values())) == 1:
        return f", system prompt `{next(iter(chosen.values()))}` in every stage"
    return ", system prompt " + ", ".join(f"`{v}` ({k})" for k, v in chosen.items())


def _html(markdown_text: str, run_dir: Path, title: str) -> str:
    import markdown

    def embed(match: re.Match) -> str:
        data = base64.b64encode((run_dir / match.group(2)).read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"
    body = markdown.markdown(re.sub(rf"!\[([^\]]*)\]\(({layout.PLOTS}/[^)]+)\)", embed, markdown_text),
                             extensions=["tables"])
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>\n")
