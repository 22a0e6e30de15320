"""Figures as files (matplotlib, Agg), and the training-loss plot that a training run (its own ``loss.png``)
and the report (every run side by side) both draw."""

from __future__ import annotations

from pathlib import Path


def use_agg() -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers, and no GUI backend in worker processes


def new_figure():
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(6.4, 4))


def save_figure(fig, ax, path: Path, legend_outside: bool = False) -> bool:
    import matplotlib.pyplot as plt
    ax.grid(alpha=0.3)
    if legend_outside:  # beside the axes: inside, it covered lines near 100% (the seed's dotted ones)
        fig.set_size_inches(8.4, 4)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def loss_plot(series: dict[str, list[dict]], path: Path, title: str = "") -> bool:
    """Training loss per step, one line per run (``{label: [{"step", "loss"}, ...]}``); False when empty."""
    series = {label: steps for label, steps in series.items() if steps}
    if not series:
        return False
    use_agg()
    fig, ax = new_figure()
    for label, steps in series.items():
        ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], label=label,
                marker="." if len(steps) < 50 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (response tokens)")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, ax, path)
