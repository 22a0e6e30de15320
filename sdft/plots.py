"""Report plots (matplotlib, Agg): metrics vs mix ratio and sample size, similarity histograms, losses."""

from __future__ import annotations

import json
from pathlib import Path


def make_plots(manifest: dict, folder: Path) -> list[tuple[str, Path]]:
    import matplotlib
    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for title, name, draw in ((("Metrics vs mix ratio (paper Figs 5-6)", "mix_ratio.png", _vs_mix),
                               ("Distance from the seed vs mix ratio", "shift_vs_mix.png", _shift_vs_mix),
                              ("Metrics vs training-set size (paper Figs 7-8)", "sample_size.png", _vs_size),
                               ("Embedding similarity to the seed's answers (paper Fig 9)", "similarity.png",
                                _similarity),
                               ("Training loss", "loss.png", _losses))):
        path = folder / name
        if draw(manifest, path):
            made.append((title, path))
    return made


def _metric_series(manifest: dict, points: list[dict]) -> dict[str, list[float]]:
    from sdft.report import task_metrics
    series: dict[str, list[float]] = {}
    for p in points:
        for key, entry in task_metrics(p["eval"]["results"]).items():
            series.setdefault(key, []).append(entry["value"])
    return {k: v for k, v in series.items() if len(v) == len(points)}


def _new_figure():
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(6.4, 4))


def _save(fig, ax, path: Path) -> bool:
    import matplotlib.pyplot as plt
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _trained(manifest: dict) -> list[dict]:
    return [m for label, m in manifest["models"].items() if label != "seed"]


def _vs_mix(manifest: dict, path: Path) -> bool:
    points = sorted((m for m in _trained(manifest) if not m.get("sample_size")), key=lambda m: m["mix_ratio"])
    if len(points) < 2:
        return False
    fig, ax = _new_figure()
    xs = [p["mix_ratio"] for p in points]
    for key, values in _metric_series(manifest, points).items():
        ax.plot(xs, [v * 100 for v in values], marker="o", label=key)
    ax.set_xlabel("mix ratio (share of distilled targets; 0 = vanilla, 1 = SDFT)")
    ax.set_ylabel("score (%)")
    return _save(fig, ax, path)


def _shift_vs_mix(manifest: dict, path: Path) -> bool:
    """Answer similarity to the seed (left axis) and seed-answer NLL (right axis) against the mix ratio."""
    points = sorted((m for m in _trained(manifest) if not m.get("sample_size") and m.get("shift")),
                    key=lambda m: m["mix_ratio"])
    if len(points) < 2:
        return False
    fig, ax = _new_figure()
    xs = [p["mix_ratio"] for p in points]
    for key, name in (("bleu4", "BLEU-4"), ("rouge_l", "ROUGE-L F"), ("embedding_cosine", "MiniLM cosine")):
        ys = [p["shift"]["text"].get("overall", {}).get(key, {}).get("mean") for p in points]
        if None not in ys:
            ax.plot(xs, ys, marker="o", label=f"{name} (left)")
    ax.set_xlabel("mix ratio (share of distilled targets; 0 = vanilla, 1 = SDFT)")
    ax.set_ylabel("similarity to the seed's answers")
    nll = [p["shift"]["text"].get("seed_likelihood", {}).get("mean") for p in points]
    if None not in nll:
        right = ax.twinx()
        right.plot(xs, nll, marker="s", linestyle="--", color="black", label="seed-answer NLL (right)")
        right.set_ylabel("NLL/token of the seed's answers")
        right.legend(fontsize=8, loc="lower right")
    return _save(fig, ax, path)


def _vs_size(manifest: dict, path: Path) -> bool:
    sized = [m for m in _trained(manifest) if m.get("sample_size")]
    if not sized:
        return False
    fig, ax = _new_figure()
    for ratio, name in ((0.0, "vanilla"), (1.0, "SDFT")):
        points = sorted((m for m in sized if m["mix_ratio"] == ratio), key=lambda m: m["sample_size"])
        for key, values in _metric_series(manifest, points).items():
            ax.plot([p["sample_size"] for p in points], [v * 100 for v in values], marker="o",
                    linestyle="-" if ratio else "--", label=f"{name}: {key}")
    ax.set_xlabel("training examples")
    ax.set_ylabel("score (%)")
    return _save(fig, ax, path)


def _similarity_values(model: dict) -> list[float]:
    shift = model.get("shift") or {}
    overall = shift.get("text", {}).get("overall", {})
    return list(overall.get("embedding_cosine", {}).get("values", []))


def _similarity(manifest: dict, path: Path) -> bool:
    models = {label: _similarity_values(m) for label, m in manifest["models"].items() if label in ("vanilla", "sdft")}
    if not any(models.values()):
        return False
    fig, ax = _new_figure()
    for label, values in models.items():
        if values:
            ax.hist(values, bins=20, range=(0, 1), alpha=0.55, label=f"{label} (mean {sum(values) / len(values):.2f})")
    ax.set_xlabel("cosine similarity to the seed's answer (all-MiniLM-L6-v2)")
    ax.set_ylabel("answers")
    return _save(fig, ax, path)


def _losses(manifest: dict, path: Path) -> bool:
    fig, ax = _new_figure()
    drawn = False
    for label, m in manifest["models"].items():
        train_json = Path(m.get("train", {}).get("dir", "")) / "train.json"
        if not train_json.is_file():
            continue
        steps = json.loads(train_json.read_text()).get("loss") or []
        if steps:
            ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], label=label)
            drawn = True
    if not drawn:
        return False
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    return _save(fig, ax, path)
