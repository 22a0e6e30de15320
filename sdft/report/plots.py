"""The report's plots: metrics vs mix ratio and sample size, similarity histograms, every model, the
interpolation path, and the training losses side by side (drawn by :func:`sdft.base.plotting.loss_plot`)."""

from __future__ import annotations

import json
from pathlib import Path

from sdft.base import layout, seeds
from sdft.base.layout import Arm, Manifest
from sdft.base.plotting import loss_plot, new_figure, save_figure, use_agg


def make_plots(manifest: Manifest, run_dir: Path) -> list[tuple[str, Path]]:
    """The report's plots, in ``run_dir/plots``; stage folders are found with :func:`layout.locate`, so a
    moved run folder keeps every plot. An arm trained at several seeds is drawn once, at its mean over
    seeds, with the seeds' range as error bars (the loss plot keeps one line per trained model)."""
    use_agg()
    view = seeds.collapsed(manifest)
    folder = Path(run_dir) / layout.PLOTS
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for title, name, draw in ((("Metrics vs mix ratio (paper Figs 5-6)", "mix_ratio", _vs_mix),
                               ("Distance from the seed vs mix ratio", "shift_vs_mix", _shift_vs_mix),
                               ("Metrics vs training-set size (paper Figs 7-8)", "sample_size", _vs_size),
                               ("Embedding similarity to the seed's answers (paper Fig 9)", "similarity", _similarity),
                               ("Training loss", "loss", None),
                               ("Every model on every metric", "arms", _arms),
                               ("Weight interpolation between the seed (0) and vanilla (1)", "interp", _interp))):
        path = folder / layout.PLOT_FILES[name]
        drawn = _losses(manifest, run_dir, path) if draw is None else draw(view, path)
        if drawn:
            made.append((title, path))
    return made


def _metric_series(points: list[Arm]) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {}
    for p in points:
        for key, metric in p.metrics().items():
            series.setdefault(key, []).append(metric.value)
    return {k: v for k, v in series.items() if len(v) == len(points)}


def _line(ax, xs: list[float], points: list[Arm], key: str, values: list[float], **style) -> str:
    """One metric against x, in %; where a point is a mean over training seeds, the seeds' range as an
    error bar. Returns the line's colour."""
    ys = [v * 100 for v in values]
    if not any(isinstance(p, seeds.SeedMean) for p in points):
        return ax.plot(xs, ys, **style)[0].get_color()
    spans = [p.metrics()[key].ci95 if isinstance(p, seeds.SeedMean) else None for p in points]
    below = [y - 100 * s[0] if s else 0.0 for y, s in zip(ys, spans)]
    above = [100 * s[1] - y if s else 0.0 for y, s in zip(ys, spans)]
    return ax.errorbar(xs, ys, yerr=[below, above], capsize=3, **style).lines[0].get_color()


def _mix_arms(manifest: Manifest) -> list[Arm]:
    return [arm for arm in manifest.trained() if arm.mix_ratio is not None]


def _vs_mix(manifest: Manifest, path: Path) -> bool:
    points = sorted((a for a in _mix_arms(manifest) if not a.sample_size), key=lambda a: a.mix_ratio)
    if len(points) < 2:
        return False
    fig, ax = new_figure()
    xs = [p.mix_ratio for p in points]
    start = manifest.arms["seed"].metrics() if "seed" in manifest.arms else {}
    for key, values in _metric_series(points).items():
        colour = _line(ax, xs, points, key, values, marker="o", label=key)
        if key in start:  # where the model began: forgetting reads as the distance below this line
            ax.axhline(start[key].value * 100, color=colour, linestyle=":", linewidth=1)
    if start:
        ax.plot([], [], color="grey", linestyle=":", label="seed model (dotted, same colour)")
    ax.set_xlabel("mix ratio (share of distilled targets; 0 = vanilla, 1 = SDFT)")
    ax.set_ylabel("score (%)")
    return save_figure(fig, ax, path, legend_outside=True)


def _shift_vs_mix(manifest: Manifest, path: Path) -> bool:
    """Answer similarity to the seed (left axis) and seed-answer NLL (right axis) against the mix ratio."""
    points = sorted((a for a in _mix_arms(manifest) if not a.sample_size and a.answer_shift),
                    key=lambda a: a.mix_ratio)
    if len(points) < 2:
        return False
    fig, ax = new_figure()
    xs = [p.mix_ratio for p in points]
    for key, name in (("bleu4", "BLEU-4"), ("rouge_l", "ROUGE-L F"), ("embedding_cosine", "MiniLM cosine")):
        ys = [p.answer_shift.get("overall", {}).get(key, {}).get("mean") for p in points]
        if None not in ys:
            ax.plot(xs, ys, marker="o", label=f"{name} (left)")
    ax.set_xlabel("mix ratio (share of distilled targets; 0 = vanilla, 1 = SDFT)")
    ax.set_ylabel("similarity to the seed's answers")
    nll = [p.answer_shift.get("seed_likelihood", {}).get("mean") for p in points]
    if None not in nll:
        right = ax.twinx()
        right.plot(xs, nll, marker="s", linestyle="--", color="black", label="seed-answer NLL (right)")
        right.set_ylabel("NLL/token of the seed's answers")
        right.legend(fontsize=8, loc="lower right")
    return save_figure(fig, ax, path)


def _vs_size(manifest: Manifest, path: Path) -> bool:
    sized = [a for a in _mix_arms(manifest) if a.sample_size]
    if not sized:
        return False
    fig, ax = new_figure()
    for ratio, name in ((0.0, "vanilla"), (1.0, "SDFT")):
        points = sorted((a for a in sized if a.mix_ratio == ratio), key=lambda a: a.sample_size)
        for key, values in _metric_series(points).items():
            _line(ax, [p.sample_size for p in points], points, key, values, marker="o",
                  linestyle="-" if ratio else "--", label=f"{name}: {key}")
    ax.set_xlabel("training examples")
    ax.set_ylabel("score (%)")
    return save_figure(fig, ax, path)


def _similarity_values(arm: Arm) -> list[float]:
    overall = (arm.answer_shift or {}).get("overall", {})
    return list(overall.get("embedding_cosine", {}).get("values", []))


def _similarity(manifest: Manifest, path: Path) -> bool:
    shown = (lambda a: a.trained) if manifest.has_other_arms else (lambda a: a.label in ("vanilla", "sdft"))
    models = {label: _similarity_values(a) for label, a in manifest.arms.items() if shown(a)}
    if not any(models.values()):
        return False
    fig, ax = new_figure()
    for label, values in models.items():
        if values:
            ax.hist(values, bins=20, range=(0, 1), alpha=0.55, label=f"{label} (mean {sum(values) / len(values):.2f})")
    ax.set_xlabel("cosine similarity to the seed's answer (all-MiniLM-L6-v2)")
    ax.set_ylabel("answers")
    return save_figure(fig, ax, path)


def _losses(manifest: Manifest, run_dir: Path, path: Path) -> bool:
    series = {}
    for arm in manifest.trained():
        record = arm.train.path(run_dir) / layout.TRAIN_RECORD
        if record.is_file():
            series[arm.label] = json.loads(record.read_text()).get("loss") or []
    return loss_plot(series, path)


def _arms(manifest: Manifest, path: Path) -> bool:
    """Grouped bars: one group per task metric, one bar per model (seed included), with 95% intervals
    (for a mean over training seeds: the seeds' range)."""
    import numpy as np

    per_model = {label: arm.metrics() for label, arm in manifest.arms.items()}
    keys = sorted({k for metrics in per_model.values() for k in metrics})
    several = any(isinstance(a, seeds.SeedMean) for a in manifest.arms.values())
    if not (manifest.has_other_arms or several) or not keys:
        return False
    fig, ax = new_figure()
    width = 0.8 / len(per_model)
    for i, (label, metrics) in enumerate(per_model.items()):
        xs = np.arange(len(keys)) + i * width
        arm = manifest.arms[label]
        name = f"{label} ({len(arm.members)} seeds)" if isinstance(arm, seeds.SeedMean) else label
        ax.bar(xs, [100 * (metrics[k].value if k in metrics else 0) for k in keys], width, label=name)
        for x, k in zip(xs, keys):
            metric = metrics.get(k)
            if metric and metric.ci95 and None not in metric.ci95:
                low, high = metric.ci95
                ax.errorbar(x, 100 * metric.value, yerr=[[100 * (metric.value - low)], [100 * (high - metric.value)]],
                            color="black", capsize=2, linewidth=0.8)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=20, fontsize=7, ha="right")
    ax.set_ylabel("score (%)")
    return save_figure(fig, ax, path)


def _interp(manifest: Manifest, path: Path) -> bool:
    """Metrics against alpha: the seed at 0, the interpolated models between, vanilla at 1."""
    points = sorted((a for a in manifest.arms.values() if a.recipe == "interp"), key=lambda a: a.params["alpha"])
    if not points or "vanilla" not in manifest.arms:
        return False
    ends = [(0.0, manifest.seed), *((a.params["alpha"], a) for a in points), (1.0, manifest.arms["vanilla"])]
    fig, ax = new_figure()
    for key, values in _metric_series([arm for _, arm in ends]).items():
        _line(ax, [alpha for alpha, _ in ends], [arm for _, arm in ends], key, values, marker="o", label=key)
    ax.set_xlabel("alpha (0 = seed, 1 = vanilla fine-tuned)")
    ax.set_ylabel("score (%)")
    return save_figure(fig, ax, path)
