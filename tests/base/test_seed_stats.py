"""Seed-level comparisons over training seeds (sdft.base.seed_stats): coverage, floors, the replication test."""

import numpy as np
import pytest

from sdft.base.seed_stats import (
    REPLICATION_MEANING,
    compare_seeds,
    per_seed_ci,
    replication_test,
    seed_level,
    seed_mean,
    seed_variance,
    simulate_coverage,
    simulate_run,
)
from sdft.base.stats import paired_comparison, pooled_paired

N = 164  # HumanEval


def _flip(base: list[float], gains: list[int], losses: list[int]) -> list[float]:
    out = list(base)
    for i in gains:
        assert out[i] == 0.0
        out[i] = 1.0
    for i in losses:
        assert out[i] == 1.0
        out[i] = 0.0
    return out


def _humaneval_example(offset: int, vanilla_churn: int) -> dict:
    """SDFT - vanilla +13 items net at two seeds (22 wins / 9 losses, then 26 / 13). ``offset`` shifts the
    second seed's changed items (0: the same items first; 40: other items); ``vanilla_churn`` items swap
    between the two vanilla models (as many gained as lost, so the vanilla means agree)."""
    v1 = [1.0] * 66 + [0.0] * 98  # failing items 66..163, passing 0..65
    fail, ok = list(range(66, 164)), list(range(66))
    v2 = _flip(v1, fail[-vanilla_churn:] if vanilla_churn else [], ok[-vanilla_churn:] if vanilla_churn else [])
    s1 = _flip(v1, fail[:22], ok[:9])
    s2 = _flip(v2, fail[offset:offset + 26], ok[offset // 4:offset // 4 + 13])
    return {"vanilla": {1: v1, 2: v2}, "sdft": {1: s1, 2: s2}}


def test_seed_level_interval_coverage_at_least_93_percent_without_true_effect():
    # 2, 3, 5 seeds x seed SD 0-15 points; two arms only (the least to borrow from); 164 items, ~20% discordant.
    rows = simulate_coverage(reps=600, old=False)
    assert len(rows) == 15
    low = [(r["seeds"], r["points"], r["new_coverage"]) for r in rows if r["new_coverage"] < 0.93]
    assert not low, f"95% intervals cover < 93%: {low}"


def test_seed_level_coverage_against_the_seed_model_at_least_93_percent_of_its_true_gap():
    # The report's "vs the seed" rows: arm - the untrained model (one set of answers), trained=1.
    rows = simulate_coverage(reps=600, old=False, against_seed=True)
    assert len(rows) == 15
    low = [(r["seeds"], r["points"], r["new_coverage"]) for r in rows if r["new_coverage"] < 0.93]
    assert not low, f"95% intervals cover < 93%: {low}"


def test_seed_level_coverage_against_the_seed_model_with_a_true_effect():
    # arm1's log-odds +1 (about +10 points): the interval must cover the true gap, not 0.
    rows = simulate_coverage(seeds=(2, 3), points=(0, 10), reps=300, old=False, against_seed=True, effect=1.0)
    low = [(r["seeds"], r["points"], r["new_coverage"]) for r in rows if r["new_coverage"] < 0.93]
    assert not low, f"95% intervals cover < 93%: {low}"


def test_against_the_seed_model_only_the_arms_training_seed_variance_counts():
    diffs = np.array([[1.0, 0.0, 0.0, -1.0] * 10, [0.0, 0.0, 1.0, 0.0] * 10])
    borrowed = {"variance": 0.01, "df": 4, "arms": ["vanilla", "sdft"]}
    ci = [(-0.05, 0.05), (-0.05, 0.05)]  # narrow: the floor must not decide
    both, one = (seed_level(diffs, ci, borrowed, trained=k) for k in (2, 1))
    assert both["variance"]["seeds"] == pytest.approx(2 * 0.01 / 2)
    assert one["variance"]["seeds"] == pytest.approx(0.01 / 2)
    assert one["variance"]["items"] == both["variance"]["items"]
    assert one["ci95"][1] - one["ci95"][0] < both["ci95"][1] - both["ci95"][0]


def test_simulated_items_are_about_20_percent_discordant():
    rng = np.random.default_rng(0)
    scores = [simulate_run(rng, 2, 0.0) for _ in range(50)]
    discordant = np.mean([np.mean(np.array(s["arm0"][0]) != np.array(s["arm1"][0])) for s in scores])
    assert 0.16 < discordant < 0.24


@pytest.mark.parametrize("offset", [0, 40])
@pytest.mark.parametrize("vanilla_churn", [0, 6])
def test_agreeing_seeds_never_narrower_than_the_widest_seed(offset, vanilla_churn):
    scores = _humaneval_example(offset, vanilla_churn)
    out = compare_seeds(scores, "vanilla")["sdft"]
    widths = [high - low for low, high in (row["ci95"] for row in out["per_seed"].values())]
    assert [(r["wins"], r["losses"]) for r in out["per_seed"].values()] == [(22, 9), (26, 13)]
    level = out["seed_level"]
    low, high = level["ci95"]
    assert level["mean"] == pytest.approx(13 / N) and low < 13 / N < high
    assert high - low >= max(widths) - 1e-12 and high - low > 0
    # The old pooling claimed more certainty than either seed when the seeds agree.
    diffs = [[a - b for a, b in zip(scores["sdft"][s], scores["vanilla"][s])] for s in (1, 2)]
    old_low, old_high = pooled_paired(diffs)["ci95"]
    assert old_high - old_low < max(widths)


def test_identical_seeds_get_the_per_seed_interval_not_a_zero_width_one():
    v = [1.0] * 60 + [0.0] * 104
    s = _flip(v, [100, 101, 102], [0])
    out = compare_seeds({"vanilla": {1: v, 2: v}, "sdft": {1: s, 2: s}}, "vanilla")["sdft"]
    level = out["seed_level"]
    assert level["method"] == "widest per-seed interval (floor)"
    (low, high), (seed_low, seed_high) = level["ci95"], out["per_seed"][1]["ci95"]
    assert high - low == pytest.approx(seed_high - seed_low) and high - low > 0.02


def test_seed_spread_is_borrowed_from_every_trained_arm():
    rng = np.random.default_rng(1)
    base = (rng.random(N) < 0.4).astype(float)
    flipped = base.copy()
    flipped[:30] = 1 - flipped[:30]
    scores = {"vanilla": {1: base, 2: base}, "sdft": {1: base, 2: base}, "other": {1: base, 2: flipped},
              "seed-like": {1: flipped, 2: flipped}}  # the same model at every seed: no information
    borrowed = seed_variance(scores)
    assert borrowed["arms"] == ["other"] and borrowed["df"] == 1
    spread = (base.mean() - flipped.mean()) ** 2 / 2
    assert borrowed["variance"] == pytest.approx(spread)
    wide = compare_seeds(scores, "vanilla")["sdft"]["seed_level"]
    alone = compare_seeds({k: scores[k] for k in ("vanilla", "sdft")}, "vanilla")["sdft"]["seed_level"]
    assert wide["variance"]["seeds"] == pytest.approx(spread) and alone["variance"]["seeds"] == 0
    assert wide["ci95"][1] - wide["ci95"][0] > alone["ci95"][1] - alone["ci95"][0]
    named = compare_seeds(scores, "vanilla", borrow=["vanilla", "sdft"])["sdft"]["seed_level"]
    assert named == alone


def test_api_shape_one_seed_and_bad_input():
    scores = _humaneval_example(40, 6)
    scores["sdft"][3] = scores["sdft"][1]  # a seed the reference lacks: per-seed rows only where both exist
    out = compare_seeds(scores, "vanilla")
    assert set(out) == {"sdft"} and set(out["sdft"]["per_seed"]) == {1, 2}
    assert out["sdft"]["per_seed"][1] == paired_comparison(scores["sdft"][1], scores["vanilla"][1])
    assert out["sdft"]["seed_level"]["seeds"] == 2 and out["sdft"]["seed_level"]["n"] == N
    one = compare_seeds({"vanilla": {1: scores["vanilla"][1]}, "sdft": {1: scores["sdft"][1]}}, "vanilla")
    assert one["sdft"]["seed_level"] is None and one["sdft"]["replication"] is None
    with pytest.raises(ValueError, match="same items"):
        compare_seeds({"vanilla": {1: [1.0, 0.0]}, "sdft": {1: [1.0]}}, "vanilla")
    with pytest.raises(ValueError, match="reference"):
        compare_seeds(scores, "missing")


def test_fast_per_seed_interval_matches_paired_comparison():
    rng = np.random.default_rng(2)
    for _ in range(20):
        a, b = (rng.random(N) < 0.4).astype(float), (rng.random(N) < 0.45).astype(float)
        assert per_seed_ci(a, b) == pytest.approx(paired_comparison(a.tolist(), b.tolist())["ci95"])
    a, b = rng.random(20), rng.random(20)
    assert per_seed_ci(a, b) == pytest.approx(paired_comparison(a.tolist(), b.tolist())["ci95"])


def _item_effect_run(rng, seeds: int, effect: float) -> np.ndarray:
    """diffs[s][i] of an arm that gains some items and loses others by ``effect`` logits at every seed
    (no average effect), against a reference; items of varied difficulty."""
    items = rng.normal(-1.0, 3.5, N)
    item_effect = np.where(np.arange(N) % 6 == 0, effect, np.where(np.arange(N) % 6 == 1, -effect, 0.0))
    arm = rng.random((seeds, N)) < 1 / (1 + np.exp(-(items + item_effect)))
    ref = rng.random((seeds, N)) < 1 / (1 + np.exp(-items))
    return arm.astype(float) - ref.astype(float)


def test_replication_test_finds_items_that_flip_the_same_way_at_every_seed():
    diffs = np.zeros((2, N))
    diffs[:, :20] = 1  # the same 20 items gained at both seeds
    diffs[0, 20:30], diffs[1, 30:40] = -1, -1  # losses on different items
    diffs[1, 40:45] = 1
    result = replication_test(diffs)
    assert result["observed"] == 20 and result["coincidences"] == 20
    assert result["p"] < 0.001 and result["z"] > 3 and result["null_mean"] < 20
    assert result["meaning"] == REPLICATION_MEANING
    rng = np.random.default_rng(3)
    assert replication_test(_item_effect_run(rng, 3, 4.0), permutations=500)["p"] < 0.01


def test_replication_test_is_quiet_without_item_effects_even_on_items_of_varied_difficulty():
    # Hard-but-possible items flip at every seed in both directions: not replication. Over 100 runs with no
    # arm effect the test should reject at 5% about 5% of the time (a shuffle over all items: 30-70%).
    rng = np.random.default_rng(4)
    ps = []
    for k in range(100):
        scores = simulate_run(rng, 2 + k % 2, 0.0)
        diffs = np.array([np.subtract(scores["arm1"][s], scores["arm0"][s]) for s in scores["arm1"]])
        ps.append(replication_test(diffs, permutations=300, rng_seed=k)["p"])
    assert np.mean(np.array(ps) < 0.05) <= 0.12
    assert np.median(ps) > 0.3


def test_replication_test_is_deterministic():
    diffs = _item_effect_run(np.random.default_rng(5), 2, 1.0)
    assert replication_test(diffs, 400, rng_seed=7) == replication_test(diffs, 400, rng_seed=7)


def test_replication_test_keeps_only_flipped_items_in_memory():
    """5,000 items, 20 flipped: the null distribution needs only the flipped ones (MMLU-sized tasks held
    permutations x seeds x items floats before: 1.4 GB for 14,042 items)."""
    import tracemalloc

    diffs = np.zeros((2, 5000))
    diffs[0, :10], diffs[1, 5:15] = 1.0, -1.0
    tracemalloc.start()
    result = replication_test(diffs, 2000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6 and result["coincidences"] == 5 and result["observed"] == 0


def test_seed_mean_adds_the_borrowed_seed_spread_to_one_seeds_interval_and_is_never_zero_width():
    from scipy.stats import t

    # Seeds that tie, nothing to borrow: the widest per-seed interval, not [0.6, 0.6].
    tie = seed_mean([0.6, 0.6], [(0.31, 0.83), (0.36, 0.80)], {"variance": None, "df": 0})
    assert tie["mean"] == pytest.approx(0.6) and tie["ci95"] == pytest.approx((0.34, 0.86))
    # A borrowed spread (variance 0.02 of one model's score on 2 df, over 2 seeds) in quadrature with it.
    spread = seed_mean([0.6, 0.8], [(0.5, 0.7), (0.7, 0.9)], {"variance": 0.02, "df": 2})
    half = (t.ppf(0.975, 2) ** 2 * 0.01 + 0.1 ** 2) ** 0.5
    assert spread["ci95"] == pytest.approx((0.7 - half, 0.7 + half)) and spread["df"] == 2
    assert seed_mean([0.5, 0.7], [None, None], {"variance": None, "df": 0})["ci95"] is None
