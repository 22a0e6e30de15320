"""Intervals and paired comparisons used in reports."""

import random

import pytest

from sdft.base.stats import mcnemar_p, mean_interval, paired_comparison, wilson_interval


def test_wilson_interval_stays_inside_0_1_and_covers_the_estimate():
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] > 0.1
    low, high = wilson_interval(13, 100)
    assert low < 0.13 < high and 0.07 < low and high < 0.22
    assert mean_interval([1.0, 0.0, 1.0, 1.0])[0] == 0.75


def test_consistent_winner_is_significant_even_when_separate_intervals_overlap():
    # Model A right on 7 items B misses, never the reverse; both miss or both hit the rest.
    a = [1.0] * 7 + [1.0] * 6 + [0.0] * 87
    b = [0.0] * 7 + [1.0] * 6 + [0.0] * 87
    wa, wb = wilson_interval(sum(a), 100), wilson_interval(sum(b), 100)
    assert wa[0] < wb[1]  # unpaired intervals overlap...
    c = paired_comparison(a, b)
    assert (c["wins"], c["losses"], c["n"]) == (7, 0, 100)
    assert c["mean"] == pytest.approx(0.07)
    assert 0 < c["ci95"][0] < 0.07 < c["ci95"][1]  # ...the paired interval excludes 0
    assert c["p"] == pytest.approx(2 * 0.5 ** 7)


def test_no_difference_gives_interval_around_zero_and_p_one():
    a = [1.0, 0.0, 1.0, 0.0] * 10
    c = paired_comparison(a, list(a))
    assert c["mean"] == 0 and c["ci95"][0] < 0 < c["ci95"][1] and c["p"] == 1.0
    assert mcnemar_p(3, 3) == 1.0 and mcnemar_p(0, 0) == 1.0


def test_paired_interval_coverage_is_about_95_percent():
    rng = random.Random(0)
    hits = 0
    for _ in range(400):
        a = [float(rng.random() < 0.2) for _ in range(80)]
        b = [x if rng.random() < 0.6 else float(rng.random() < 0.3) for x in a]
        true = 0.2 - (0.6 * 0.2 + 0.4 * 0.3)
        low, high = paired_comparison(a, b)["ci95"]
        hits += low <= true <= high
    assert 0.90 <= hits / 400 <= 0.99


def test_non_binary_scores_use_a_normal_interval_and_no_p_value():
    c = paired_comparison([0.5, 0.7, 0.9, 0.6], [0.4, 0.5, 0.8, 0.6])
    assert c["p"] is None and c["ci95"][0] < c["mean"] < c["ci95"][1]
    with pytest.raises(ValueError, match="equal lengths"):
        paired_comparison([1.0], [1.0, 0.0])


def test_intervals_match_hand_computed_values():
    # Bonett-Price for 7 wins, 0 losses in 100 pairs: (8/102 - 1/102) +- 1.96 sqrt((9/102 - (7/102)^2) / 102).
    low, high = paired_comparison([1.0] * 7 + [0.0] * 93, [0.0] * 100)["ci95"]
    assert (low, high) == pytest.approx((0.01254, 0.12471), abs=1e-4)  # 0.06863 +- 0.05609
    # Non-binary scores: the normal interval of the differences (0.1, 0.2, 0.1, 0.0), sd 0.0816, se 0.0408.
    c = paired_comparison([0.5, 0.7, 0.9, 0.6], [0.4, 0.5, 0.8, 0.6])
    assert c["ci95"] == pytest.approx((0.1 - 1.96 * 0.040825, 0.1 + 1.96 * 0.040825), abs=1e-4)
    # A mean of scores that are not all 0/1 gets the normal interval, not Wilson's, whatever comes first.
    mean, low, high = mean_interval([1.0, 0.5, 0.0])
    assert mean == 0.5 and (low, high) == pytest.approx((0.5 - 1.96 * 0.288675, 0.5 + 1.96 * 0.288675), abs=1e-4)
