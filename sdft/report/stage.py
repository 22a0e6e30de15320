"""The experiment report: ``report.md`` and a self-contained ``report.html`` (plots embedded).

Built only from files a run saved (the :class:`sdft.base.layout.Manifest` and the stage folders it names), so
``sdft report RUN_DIR`` can rebuild it at any time without a model, from run folders of every version.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

from sdft.base import layout, seeds
from sdft.base.errors import ConfigError
from sdft.base.layout import Arm, Manifest
from sdft.base.stats import Metric, pooled_paired, seed_interval
from sdft.base.store import read_jsonl
from sdft.report import cost as report_cost
from sdft.report import distillation as report_distillation
from sdft.report import openings as report_openings
from sdft.report import plots
from sdft.report.config import ReportConfig
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


def _section(title: str, header: list[str], rows: list[list], caption: str) -> str:
    return f"## {title}\n\n{_table(header, rows)}\n\n{caption}\n"


# ---------------------------------------------------------------- sections

def results_section(manifest: Manifest) -> str:
    per_model = {label: arm.metrics() for label, arm in manifest.arms.items()}
    columns = sorted({k for metrics in per_model.values() for k in metrics})
    seed = per_model.get("seed", {})
    rows = []
    for name, members in seeds.groups(manifest.arms.values()).items():
        if len(members) == 1:
            rows.append([members[0].label, *_model_cells(members[0].label, per_model[members[0].label], columns, seed)])
        else:
            rows.append([f"{name} ({len(members)} seeds)",
                         *_seed_mean_cells([per_model[m.label] for m in members], columns, seed)])
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


SEED_NOTE = ("Rows marked (N seeds): the arm trained at N training seeds; mean over seeds, 95% t-interval over the "
             "seeds' scores in brackets (N − 1 degrees of freedom: training-seed variance, wide with few seeds), "
             "change of the mean vs seed in parentheses, then each seed's score in seed order (per-item "
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


def _seed_mean_cells(per_seed: list[dict[str, Metric]], columns: list[str], seed: dict[str, Metric]) -> list[str]:
    """One arm over its seeds: mean [t-interval over seeds] (change vs seed); seeds' scores."""
    cells = []
    for col in columns:
        values = [m[col].value for m in per_seed if col in m and m[col].value is not None]
        if len(values) < len(per_seed):  # a seed without this metric: a mean of the rest would mislead
            cells.append("–")
            continue
        mean, low, high = seed_interval(values)
        cell = f"{_fmt(mean)} [{_fmt(low)}, {_fmt(high)}]"
        if col in seed and seed[col].value is not None:
            cell += f" ({(mean - seed[col].value) * 100:+.1f})"
        cells.append(cell + "; seeds " + ", ".join(_fmt(v) for v in values))
    return cells


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


def paired_section(manifest: Manifest, generations: dict) -> str:
    """Each model trained on rewrites against vanilla (mix 0) trained on the same examples, item by item.

    ``generations`` is :func:`load_generations`'s map, read once for all sections."""
    from sdft.base.stats import paired_comparison

    rows = []
    for name, members in seeds.groups(manifest.arms.values()).items():
        per_seed = []  # each seed's {task: (metric, ours, theirs)}, for the pooled rows
        for arm in members:
            baseline = _vanilla_for(manifest, arm)
            if arm.label in ("seed", baseline) or baseline is None:
                continue
            pairs = _pairs(generations[arm.label], generations[baseline])
            for task, (metric, ours, theirs) in sorted(pairs.items()):
                c = paired_comparison(list(ours.values()), list(theirs.values()))
                low, high = c["ci95"]
                rows.append([f"{arm.label} − {baseline}", f"{task}/{metric}", c["n"],
                             f"{c['mean'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]", c["wins"],
                             c["losses"], "–" if c["p"] is None else f"{c['p']:.3f}"])
            per_seed.append(pairs)
            against = seeds.group_name(manifest.arms[baseline])
        if len(per_seed) > 1:
            rows += _pooled_rows(f"{name} − {against} (seeds pooled)", per_seed)
    if not rows:
        return ""
    title, what = (("Each arm vs vanilla, item by item", "Each model (rewrites, other arms)")
                   if manifest.has_other_arms else ("Rewrites vs original targets, item by item",
                                                    "Each model trained on rewrites"))
    return _section(title,
                    ["comparison", "task/metric", "items", "difference (points) [95%]", "better", "worse",
                     "McNemar p"], rows,
                    f"{what} against vanilla trained on the same examples, on the same "
                    "evaluation items: the difference of their scores with a paired 95% interval, how many items "
                    "the first scored higher / lower on, and for 0/1 scores the exact McNemar p-value (interval: "
                    "Bonett-Price adjusted Wald for paired proportions). A row comparing one pair of trained "
                    "models measures evaluation noise only, not training-seed variance." + (POOLED_NOTE if seeds.several(manifest)
                                                                             else ""))


# Why pooled this way: sdft.base.stats.pooled_paired; DEVELOPERS.md ("Training seeds").
POOLED_NOTE = (" Each seed's models are compared with vanilla trained at the same seed. Rows (seeds pooled): "
               "the mean difference over every seed and item (items all seeds share; items × seeds in the items "
               "column, better / worse summed over seeds), with a 95% interval that adds the item-sampling "
               "variance and the training-seed variance (t with Satterthwaite degrees of freedom), so it "
               "covers both a new draw of evaluation items and a new training seed; no McNemar test there, as "
               "the pairs of different seeds share items and are not independent.")


def _pairs(ours: dict, theirs: dict) -> dict[str, tuple[str, dict[str, float], dict[str, float]]]:
    """``{task: (metric, {id: our score}, {id: their score})}`` on the items both models were scored on."""
    ours, theirs = _item_scores(ours), _item_scores(theirs)
    out = {}
    for task in set(ours) & set(theirs):
        (metric, a), b = ours[task], theirs[task][1]
        ids = sorted(set(a) & set(b))
        if ids:
            out[task] = (metric, {i: a[i] for i in ids}, {i: b[i] for i in ids})
    return out


def _pooled_rows(comparison: str, per_seed: list[dict]) -> list[list]:
    """One row per task: the arm against vanilla over all its seeds (:func:`sdft.base.stats.pooled_paired`)."""
    rows = []
    for task in sorted(set.intersection(*(set(p) for p in per_seed))):
        ids = sorted(set.intersection(*(set(p[task][1]) for p in per_seed)))
        if len(ids) < 2:
            continue
        diffs = [[p[task][1][i] - p[task][2][i] for i in ids] for p in per_seed]
        c = pooled_paired(diffs)
        low, high = c["ci95"]
        interval = ("(no item or seed differs: no interval)" if c["df"] is None  # a zero-width one would claim certainty
                    else f"[{low * 100:+.1f}, {high * 100:+.1f}]")
        rows.append([comparison, f"{task}/{per_seed[0][task][0]}",
                     f"{len(ids)} × {len(per_seed)}", f"{c['mean'] * 100:+.1f} {interval}",
                     sum(d > 0 for row in diffs for d in row), sum(d < 0 for row in diffs for d in row), "–"])
    return rows


def cost_section(manifest: Manifest) -> str:
    if not manifest.has_other_arms:  # vanilla vs SDFT: the distillation section states the one extra cost
        return ""
    rows, caption = report_cost.cost_table(manifest)
    return _section("Training cost per arm", report_cost.HEADER, rows, caption) if rows else ""


def _vanilla_for(manifest: Manifest, arm: Arm) -> str | None:
    """Vanilla (the "mix" recipe at mix 0) trained on as many examples as ``arm``, with its training seed."""
    return next((label for label, other in manifest.arms.items()
                 if other.recipe == "mix" and other.mix_ratio == 0 and other.sample_size == arm.sample_size
                 and other.seed == arm.seed),
                None)


def _item_scores(found: dict[str, tuple[dict, list[dict]]]) -> dict[str, tuple[str, dict[str, float]]]:
    """``{task: (primary metric, {item id: score})}`` from one model's saved generations."""
    return {task: (entry.get("metric", "score"),
                   {r["id"]: float(r["score"]) for r in records if r.get("score") is not None})
            for task, (entry, records) in found.items()}


def load_generations(manifest: Manifest, run_dir: Path) -> dict[str, dict[str, tuple[dict, list[dict]]]]:
    """``{model label: {task: (results entry, generation records)}}`` for the tasks whose generations
    were saved."""
    return {label: _generations(arm, run_dir) for label, arm in manifest.arms.items()}


def _generations(arm: Arm, run_dir: Path) -> dict[str, tuple[dict, list[dict]]]:
    eval_dir = arm.eval.path(run_dir)
    found = {}
    for task, entry in arm.eval.result.get("tasks", {}).items():
        path = eval_dir / str(entry.get("generations") or "")
        if entry.get("generations") and path.is_file():
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
    parts = [f"# SDFT report: {manifest.name}\n",
             f"Seed model `{manifest.model}`, training data `{manifest.data}` (task kind "
             f"{manifest.task}){_system_line(manifest)}. Every stage's settings are in its folder's "
             f"`{layout.STAGE}` and `{layout.RUN_RECORD}`.\n",
             results_section(manifest), paired_section(manifest, generations),
             report_distillation.distill_section(manifest, distilled, run_dir),
             openings_section(distilled, generations),
             length_section(generations), shift_section(manifest),
             cost_section(manifest)]
    if images:
        parts.append("## Plots\n\n" + "\n\n".join(f"![{title}]({layout.PLOTS}/{path.name})"
                                                     for title, path in images))
        if seeds.several(manifest):
            parts[-1] += ("\n\nAn arm trained at several seeds is one point (or bar) at its mean over seeds, with "
                          "error bars from the lowest to the highest seed; other bars show their 95% per-item "
                          "interval. The loss plot has one line per trained model.")
    markdown_text = "\n".join(p for p in parts if p)
    md_path = run_dir / layout.REPORT_MD
    md_path.write_text(markdown_text)
    html_path = run_dir / layout.REPORT_HTML
    html_path.write_text(_html(markdown_text, run_dir, manifest.name))
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
