"""The report of a run with several training seeds, built from run folders with known per-seed scores:
mean and spread over seeds, per-seed rows tracing to folders, paired tests per seed and over seeds."""

import json
from pathlib import Path

import pytest

from sdft.base import layout, plotting, seeds
from sdft.base.layout import Arm, Manifest, StageRecord
from sdft.base.stats import Metric, pooled_paired, seed_interval
from sdft.report.stage import write_report

# Ten evaluation items per model, scored 0/1; vanilla and sdft at seeds 42 and 43.
SCORES = {"seed": [1] * 5 + [0] * 5,
          "vanilla": [1] * 6 + [0] * 4, "sdft": [1] * 7 + [0] * 3,
          "vanilla-s43": [1] * 8 + [0] * 2, "sdft-s43": [1] * 9 + [0] * 1}


def _model(run_dir: Path, label: str, scores: list[int] | None = None) -> Arm:
    eval_dir = run_dir / layout.EVAL / f"{label}-0123456789"
    scores = SCORES[label] if scores is None else scores
    records = [{"id": f"item{i}", "score": s} for i, s in enumerate(scores)]
    layout.generations_file(eval_dir, "openfunctions").parent.mkdir(parents=True)
    layout.generations_file(eval_dir, "openfunctions").write_text("".join(json.dumps(r) + "\n" for r in records))
    metric = Metric.of_scores([float(s) for s in scores]).to_json()
    result = {"tasks": {"openfunctions": {"metric": "accuracy", "metrics": {"accuracy": metric},
                                          "generations": "generations/openfunctions.jsonl"}}}
    (eval_dir / layout.RESULTS).write_text(json.dumps(result))
    if label == "seed":
        return Arm("seed", "seed", StageRecord(str(eval_dir), result))
    seed = 43 if label.endswith("-s43") else 42
    train_dir = run_dir / layout.TRAIN / f"{label}-abcdefabcd"
    train_dir.mkdir(parents=True)
    return Arm(label, "mix", StageRecord(str(eval_dir), result), seed=seed,
               params={"mix_ratio": 1.0 if label.startswith("sdft") else 0.0, "sample_size": None},
               train=StageRecord(str(train_dir), {}))


@pytest.fixture
def report(tmp_path) -> str:
    manifest = Manifest(name="known", model="m", data="d.json", task="function_call")
    for label in SCORES:
        manifest.arms[label] = _model(tmp_path, label)
    manifest.write(tmp_path)
    return Path(write_report(tmp_path)["md"]).read_text()


def test_each_arm_has_one_row_of_means_over_seeds(report):
    # Seed variance borrowed from both arms: (2 x 10² + 2 x 10²) / 2 df = 200, over 2 seeds 100 (SE 10 points),
    # t(0.975, 2) = 4.303 -> 43.0; plus the widest per-seed interval's half-width (vanilla: Wilson 6/10,
    # [31.3, 83.2] -> 26.0; sdft: 7/10, [39.7, 89.2] -> 24.8) in quadrature: ±50.3 and ±49.6.
    assert "| vanilla (2 seeds) | 70.0 [19.7, 120.3] (+20.0); seeds 60.0, 80.0 |" in report
    assert "| sdft (2 seeds) | 80.0 [30.4, 129.6] (+30.0); seeds 70.0, 90.0 |" in report
    assert "| seed | 50.0 [23.7, 76.3] |" in report  # the shared seed model keeps its per-item interval
    assert "never narrower than one seed's interval" in report


def test_seeds_that_score_the_same_get_no_zero_width_interval(tmp_path):
    """Both arms score the same at both seeds: no seed spread to borrow, so the interval is the widest
    per-seed one (Wilson 6/10 and 7/10), never [60.0, 60.0]."""
    manifest = Manifest(name="tie", model="m", data="d.json", task="function_call")
    for label, scores in {"seed": SCORES["seed"], "vanilla": SCORES["vanilla"], "vanilla-s43": SCORES["vanilla"],
                          "sdft": SCORES["sdft"], "sdft-s43": SCORES["sdft"]}.items():
        manifest.arms[label] = _model(tmp_path, label, scores)
    manifest.write(tmp_path)
    report = Path(write_report(tmp_path)["md"]).read_text()
    assert "| vanilla (2 seeds) | 60.0 [34.0, 86.0] (+10.0); seeds 60.0, 60.0 |" in report
    assert "| sdft (2 seeds) | 70.0 [45.2, 94.8] (+20.0); seeds 70.0, 70.0 |" in report


def test_every_model_has_a_per_seed_row_naming_its_folder(report):
    assert "## Results per training seed" in report
    assert "| vanilla-s43 | 43 | train/vanilla-s43-abcdefabcd | 80.0 [49.0, 94.3] (+30.0) |" in report
    assert "| sdft | 42 | train/sdft-abcdefabcd | 70.0 [39.7, 89.2] (+20.0) |" in report
    assert "| seed | – | eval/seed-0123456789 | 50.0 [23.7, 76.3] |" in report


def test_paired_comparison_per_seed_and_over_seeds(report):
    # Each seed against its own vanilla: sdft wins item 6 at seed 42 and item 8 at seed 43.
    assert "| sdft − vanilla | openfunctions/accuracy | 10 | +10.0 [-19.6, +36.2] | 1 | 0 | 1.000 |" in report
    assert "| sdft-s43 − vanilla-s43 | openfunctions/accuracy | 10 | +10.0 [" in report
    assert "sdft − vanilla-s43" not in report and "sdft-s43 − vanilla |" not in report
    # Over seeds (sdft.base.seed_stats): both arms' scores move 20 points between seeds, a borrowed seed
    # variance of 200 on 2 df; the difference of two models' means over 2 seeds has variance 2 x 200 / 2,
    # SE 14.1 points, t(0.975, 2) = 4.303 -> ±60.8 (wider than the per-seed ±27.9: no floor). The old pooled
    # row said +10.0 [-5.1, +25.1]: narrower than either seed's own interval.
    assert ("| sdft − vanilla (2 seeds) | openfunctions/accuracy | 10 × 2 | +10.0 [-50.8, +70.8] | 2 | 0 | – |"
            in report)
    assert "seeds pooled" not in report and "Seed variance borrowed from: openfunctions: vanilla, sdft (2 df)" in report
    # The wins fall on different items (6 and 8): nothing coincides, p = 1.
    assert "| sdft − vanilla (2 seeds) | openfunctions/accuracy | 2 | 0 | 0 | 0.0 ± 0.0 | 1.000 |" in report
    assert "It says nothing about the size or sign of the average difference" in report


def test_the_manifest_groups_models_by_arm(tmp_path, report):
    manifest = Manifest.read(tmp_path)
    assert manifest.arms["sdft-s43"].seed == 43 and manifest.seed.seed is None
    assert {name: [a.label for a in members] for name, members in seeds.groups(manifest.arms.values()).items()} == \
        {"seed": ["seed"], "vanilla": ["vanilla", "vanilla-s43"], "sdft": ["sdft", "sdft-s43"]}
    view = seeds.collapsed(manifest)
    vanilla = view.arms["vanilla"].metrics()["openfunctions/accuracy"]
    assert vanilla.value == pytest.approx(0.7) and vanilla.ci95 == [0.6, 0.8]  # plots: mean, seeds' range
    assert (tmp_path / layout.PLOTS / "mix_ratio.png").is_file()
    assert "error bars from the lowest to the highest seed" in (tmp_path / layout.REPORT_MD).read_text()


def test_pooled_interval_reduces_to_the_known_cases():
    from scipy.stats import t

    # Seeds that agree exactly: the paired t-interval over items.
    diffs = [0.0, 1.0, 0.0, 1.0, -1.0, 0.0]
    pooled = pooled_paired([diffs, diffs])
    mean = sum(diffs) / 6
    se = (sum((d - mean) ** 2 for d in diffs) / 5 / 6) ** 0.5
    assert pooled["ci95"] == pytest.approx((mean - t.ppf(0.975, 5) * se, mean + t.ppf(0.975, 5) * se))
    # Items that agree within each seed: the t-interval over the seeds' means.
    pooled = pooled_paired([[0.1] * 4, [0.3] * 4, [0.2] * 4])
    assert pooled["mean"] == pytest.approx(0.2) and pooled["df"] == pytest.approx(2)
    assert pooled["ci95"] == pytest.approx(seed_interval([0.1, 0.3, 0.2])[1:])
    with pytest.raises(ValueError, match="two seeds"):
        pooled_paired([diffs])


def test_labels_follow_the_runs_own_seed_and_seed_zero_is_a_seed():
    # A train section with seed 7: its models keep the arm's label, seed 42 is just another seed.
    assert seeds.label("vanilla", 7, primary=7) == "vanilla"
    assert seeds.label("vanilla", 42, primary=7) == "vanilla-s42"
    seeds.check([0, 1])  # 0 is a valid seed (numpy takes 0 .. 2**32 - 1)


def test_a_seed_missing_a_metric_blanks_the_mean_and_one_shared_item_gives_no_seed_level_row():
    from sdft.report.paired import _over_seeds
    from sdft.report.stage import _seed_mean_cells

    both, one = {"t/acc": Metric(0.5, [0.4, 0.6])}, {}
    assert _seed_mean_cells([both, one], ["t/acc"], {}, {}) == ["–"]  # not the mean of the seeds that have it
    assert _seed_mean_cells([both, {"t/acc": Metric(0.7, [0.6, 0.8])}], ["t/acc"], {}, {})[0].startswith("60.0 [")
    # Neither a seed spread nor per-seed intervals: the seeds' values, no interval.
    assert _seed_mean_cells([{"t/acc": Metric(0.5)}, {"t/acc": Metric(0.7)}], ["t/acc"], {}, {}) == \
        ["60.0; seeds 50.0, 70.0"]
    # Two seeds sharing a single scored item: too few for an interval, so no seed-level row (and no crash).
    per_seed = [{"t": ("acc", {"i1": 1.0}, {"i1": 0.0})}, {"t": ("acc", {"i1": 1.0, "i2": 1.0}, {"i1": 1.0})}]
    assert _over_seeds("sdft − vanilla", per_seed, {}) == []


def test_plots_average_the_answer_shift_over_seeds(tmp_path):
    manifest = Manifest(name="known", model="m", data="d.json", task="function_call")
    for label in SCORES:
        manifest.arms[label] = _model(tmp_path, label)
    for label, (bleu, nll) in {"sdft": (0.2, 0.5), "sdft-s43": (0.4, 0.7)}.items():
        manifest.arms[label].answer_shift = {"overall": {"bleu4": {"mean": bleu, "values": [bleu]}},
                                             "seed_likelihood": {"mean": nll}}
    shift = seeds.collapsed(manifest).arms["sdft"].answer_shift
    assert shift["overall"]["bleu4"]["mean"] == pytest.approx(0.3) and shift["overall"]["bleu4"]["values"] == [0.2, 0.4]
    assert shift["seed_likelihood"]["mean"] == pytest.approx(0.6)


def test_the_mix_ratio_plot_marks_where_the_seed_model_began(tmp_path, monkeypatch):
    """Forgetting is a distance from the seed: each metric's line gets the seed's score as a dotted line of
    its colour (here the seed's 50% against the arms' means over seeds)."""
    from sdft.report import plots

    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, ax, path, **kw: drawn.setdefault(path.name, ax) is not None)
    manifest = Manifest(name="known", model="m", data="d.json", task="function_call")
    for label in SCORES:
        manifest.arms[label] = _model(tmp_path, label)
    plots.make_plots(manifest, tmp_path)
    ax = drawn["mix_ratio.png"]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":" and len(line.get_ydata()) == 2]
    assert [list(line.get_ydata()) for line in dotted] == [[50.0, 50.0]]
    metric_line = next(c for c in ax.containers if c.get_label() == "openfunctions/accuracy")
    assert dotted[0].get_color() == metric_line.lines[0].get_color()


def test_a_legend_drawn_outside_leaves_the_axes_clear(tmp_path):
    """The mix-ratio plot's legend (a metric and a dotted seed line each) covered lines near 100% when
    drawn inside the axes; outside, its box starts right of the plotting area."""

    fig, ax = plotting.new_figure()
    for k in range(6):
        ax.plot([0, 1], [100 - k, 99 - k], label=f"metric {k}")
    boxes = {}
    real_close = __import__("matplotlib.pyplot", fromlist=["close"]).close

    def close(f):
        f.canvas.draw()
        renderer = f.canvas.get_renderer()
        boxes["legend"] = ax.get_legend().get_window_extent(renderer)
        boxes["axes"] = ax.get_window_extent(renderer)
        real_close(f)

    import matplotlib.pyplot as plt
    original, plt.close = plt.close, close
    try:
        assert plotting.save_figure(fig, ax, tmp_path / "p.png", legend_outside=True)
    finally:
        plt.close = original
    assert boxes["legend"].x0 >= boxes["axes"].x1
