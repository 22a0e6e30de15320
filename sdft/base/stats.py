"""Small statistics helpers: means with 95% intervals, and paired comparisons of two models on the same items."""

from __future__ import annotations

import math
from dataclasses import dataclass


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion; sensible at 0% and 100% unlike the normal interval."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Metric:
    """One metric of one task: value, 95% interval and item count (``results.json``'s ``metrics`` entries)."""

    value: float
    ci95: list[float] | None = None
    n: int | None = None

    @classmethod
    def of_scores(cls, scores: list[float]) -> "Metric":
        """Mean of per-item scores with its 95% interval (:func:`mean_interval`)."""
        value, low, high = mean_interval(scores)
        return cls(value, [low, high], len(scores))

    @classmethod
    def from_json(cls, data: dict) -> "Metric":
        return cls(data["value"], data.get("ci95"), data.get("n"))

    def to_json(self) -> dict:
        return {"value": self.value, "ci95": self.ci95, "n": self.n}


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean and 95% interval: Wilson for 0/1 scores, normal approximation otherwise."""
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"), float("nan"))
    mean = sum(values) / n
    if all(v in (0.0, 1.0) for v in values):
        low, high = wilson_interval(sum(values), n, z)
        return (mean, low, high)
    if n == 1:
        return (mean, mean, mean)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var / n)
    return (mean, mean - half, mean + half)


def paired_comparison(a: list[float], b: list[float], z: float = 1.96) -> dict:
    """Model A against model B scored on the same items (``a[i]``, ``b[i]``).

    Returns the mean difference ``a - b`` with a 95% interval, the items A scored higher / lower on, and,
    for 0/1 scores, the exact McNemar p-value. Pairing removes the between-item variance that makes two
    separate intervals overlap even when one model is consistently better. For 0/1 scores the interval
    is Bonett and Price's adjusted Wald interval for paired proportions; other scores get a
    normal-approximation interval.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("no items to compare")
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / n
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    result = {"n": n, "mean": mean, "wins": wins, "losses": losses, "p": None}
    if all(v in (0.0, 1.0) for v in (*a, *b)):
        return result | {"ci95": _bonett_price_paired(wins, losses, n, z), "p": mcnemar_p(wins, losses)}
    half = z * math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else 0.0
    return result | {"ci95": (mean - half, mean + half)}


def _bonett_price_paired(wins: int, losses: int, n: int, z: float) -> tuple[float, float]:
    """Interval for p_A - p_B from paired 0/1 scores: the Wald interval after adding one to each
    discordant cell (Bonett & Price 2012, Stat. Med. 31:1891). Unlike the plain Wald (or the conditional
    exact) interval it keeps about 95% coverage with few discordant items and does not collapse to
    [0, 0] when the two models agree on every item."""
    p_win, p_loss = (wins + 1) / (n + 2), (losses + 1) / (n + 2)
    centre = p_win - p_loss
    half = z * math.sqrt((p_win + p_loss - centre ** 2) / (n + 2))
    return (max(-1.0, centre - half), min(1.0, centre + half))


def mcnemar_p(wins: int, losses: int) -> float:
    """Exact two-sided McNemar p-value: items only model A got right (``wins``) against items only
    model B got right (``losses``), tested against an even split."""
    if wins + losses == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def seed_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """Mean over training seeds with a t-interval (n - 1 degrees of freedom); None below two seeds.

    Each value is one trained model's score, so the spread is training-seed variance (plus the evaluation
    noise each model's score carries). With two seeds the interval is wide (t = 12.7): honest, since two
    runs say little about how far a third would land."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t

    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return (mean, mean - half, mean + half)


def pooled_paired(diffs: list[list[float]], level: float = 0.95) -> dict:
    """Model A against model B at several training seeds, on the same items: ``diffs[s][i]`` is
    A's score minus B's on item i, both trained with seed s.

    The estimate is the mean of every difference (the mean of the per-seed mean differences). Its variance
    has two sources, item sampling and training seeds, and the seeds share the items, so pooling all item
    pairs as independent would count each item once per seed and ignore that seeds differ. Here the
    variance is the sum of two estimates: of the item means (each item's difference averaged over seeds),
    var_i / n_items, and of the seed means, var_s / n_seeds. Both contain the item x seed residual, so the
    sum counts it twice: slightly conservative. The interval is a t with Welch-Satterthwaite degrees of
    freedom, which with few seeds is dominated by the seed term (wide, as it should be)."""
    seeds, n = len(diffs), len(diffs[0]) if diffs else 0
    if seeds < 2 or n < 2 or any(len(row) != n for row in diffs):
        raise ValueError(f"pooling needs at least two seeds and items, equal per seed (got {seeds} seeds)")
    from scipy.stats import t

    item_means = [sum(row[i] for row in diffs) / seeds for i in range(n)]
    seed_means = [sum(row) / n for row in diffs]
    mean = sum(seed_means) / seeds
    v_items = sum((m - mean) ** 2 for m in item_means) / (n - 1) / n
    v_seeds = sum((m - mean) ** 2 for m in seed_means) / (seeds - 1) / seeds
    variance = v_items + v_seeds
    if variance == 0:
        return {"mean": mean, "ci95": (mean, mean), "df": None, "seeds": seeds, "n": n}
    df = variance ** 2 / (v_items ** 2 / (n - 1) + v_seeds ** 2 / (seeds - 1))
    half = float(t.ppf(0.5 + level / 2, df)) * math.sqrt(variance)
    return {"mean": mean, "ci95": (mean - half, mean + half), "df": df, "seeds": seeds, "n": n}
