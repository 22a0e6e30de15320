"""Arms against a reference arm over several training seeds: a seed-level interval and an item-replication test.

A run trains every arm at a few training seeds and scores every model on the same items. Estimating the
training-seed variance from one arm-vs-reference pair alone (``sdft.base.stats.pooled_paired``) leaves one degree
of freedom at two seeds: seeds that happen to agree give an interval narrower than either seed's own, and
95% intervals covered as little as 87%. Here the seed variance is borrowed from every arm of the run, and the
interval is never narrower than the widest per-seed one. Method, assumptions and coverage: docs/statistics.md.
"""

from __future__ import annotations

import math
import sys
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats
from scipy.special import expit

from sdft.base.stats import _bonett_price_paired, paired_comparison, pooled_paired

Scores = Mapping[str, Mapping[object, Sequence[float]]]  # scores[arm][seed] = per-item scores, common item order

REPLICATION_MEANING = (
    "A small p means the items an arm gains or loses against the reference are the same at every training seed "
    "more often than chance: a systematic, item-level effect of the training data. It says nothing about the "
    "size or sign of the average difference and does not replace the interval.")


def compare_seeds(scores: Scores, reference: str, *, borrow: Sequence[str] | None = None, level: float = 0.95,
                  permutations: int = 2000, rng_seed: int = 0) -> dict[str, dict]:
    """Every arm of one task's ``scores`` against ``reference`` (vanilla), seed by seed and over seeds.

    ``scores[arm][seed]`` is one trained model's per-item scores, all lists in the same item order; pass
    every trained model of the run: the seed variance is borrowed from all of them, or from the arms named
    in ``borrow`` (leave out arms made from another arm's weights, such as interp: not independent). Returns
    ``{arm: {"per_seed": {seed: paired_comparison row}, "seed_level": seed_level row or None,
    "replication": replication_test row or None}}`` for each arm but the reference; the last two need the
    arm and the reference at two or more common seeds."""
    _check(scores, reference)
    borrowed = seed_variance(scores if borrow is None else {arm: scores[arm] for arm in borrow})
    z = 1.96 if level == 0.95 else float(scipy_stats.norm.ppf(0.5 + level / 2))  # 1.96: the report's per-seed rows
    out = {}
    for arm, by_seed in scores.items():
        if arm == reference:
            continue
        shared = [s for s in by_seed if s in scores[reference]]
        per_seed = {s: paired_comparison(list(by_seed[s]), list(scores[reference][s]), z) for s in shared}
        diffs = np.array([np.subtract(by_seed[s], scores[reference][s]) for s in shared], dtype=float)
        several = len(shared) > 1
        out[arm] = {"per_seed": per_seed,
                    "seed_level": seed_level(diffs, [r["ci95"] for r in per_seed.values()], borrowed, level)
                    if several else None,
                    "replication": replication_test(diffs, permutations, rng_seed) if several else None}
    return out


def _check(scores: Scores, reference: str) -> None:
    if reference not in scores:
        raise ValueError(f"reference arm {reference!r} has no scores")
    lengths = {len(v) for by_seed in scores.values() for v in by_seed.values()}
    if len(lengths) != 1 or min(lengths) < 2:
        raise ValueError("every model needs scores on the same items (two or more) in the same order, "
                         f"got lengths {sorted(lengths)}")


def seed_variance(scores: Scores) -> dict:
    """Training-seed variance of one model's mean score, pooled over every arm trained at two or more seeds.

    Why borrow: one arm-vs-reference pair at S seeds gives S - 1 degrees of freedom, which at 2 seeds makes
    the variance estimate (and the interval) swing from zero to huge. Every arm of a run is retrained per
    seed with the same machinery, so the spread of each arm's mean scores around that arm's own mean
    estimates the same training-seed variance; pooling gives sum(S_arm - 1) degrees of freedom. Assumption:
    that variance is about the same for every arm, and the arms are trained independently (an arm derived
    from another's weights adds degrees of freedom it does not have). The spread holds both the seed's shift
    of the whole score and the item-level churn of a retrained model (other items solved by chance), the two
    things a new training seed changes. An arm whose
    scores are identical at every seed (a model the training seed does not touch) is left out: its zero
    spread says nothing about training seeds. Returns ``{"variance": float or None, "df": int, "arms": [...]}``."""
    ss, df, used = 0.0, 0, []
    for arm, by_seed in scores.items():
        rows = np.array([np.asarray(v, dtype=float) for v in by_seed.values()])
        if len(rows) < 2 or (rows == rows[0]).all():
            continue
        means = rows.mean(axis=1)
        ss += float(((means - means.mean()) ** 2).sum())
        df += len(means) - 1
        used.append(arm)
    return {"variance": ss / df if df else None, "df": df, "arms": used}


def seed_level(diffs: np.ndarray, per_seed_ci: Sequence[Sequence[float]], borrowed: dict,
               level: float = 0.95, *, trained: int = 2) -> dict:
    """Mean difference over seeds and items with a 95% interval for a new draw of items and training seeds.

    ``diffs[s][i]`` is the arm's score minus the reference's on item i, both trained with seed s. Its mean
    is the mean of S differences of two models' mean scores, so its variance is 2 x (borrowed variance of
    one model's mean over seeds) / S. That spread holds both the training-seed shift and each retrained
    model's item-level churn, so no separate item-noise term is needed (a positive correlation between arm
    and reference at one seed, e.g. a shared data order, makes this wide, never narrow). Added: item effects
    every seed shares (an item the arm gains at every seed), which do not average out over seeds
    (:func:`shared_item_variance`). Each part gets its own t quantile, half-width = sqrt(t_seed^2 v_seed +
    t_item^2 v_item): a Welch-Satterthwaite df would rise exactly when the few-df seed spread came out small,
    and under-cover. Floor: the half-width is at least the widest per-seed paired interval's, so agreeing
    seeds never look more certain than one seed did, and the interval is never zero-width (Bonett-Price
    intervals never are). ``df`` is the borrowed seed variance's, the one that limits the interval.

    ``trained=1`` when the reference is a model no training seed moves (the seed model: the same answers in
    every row of ``diffs``): only the arm is retrained per seed, so the borrowed variance counts once, and
    the reference's own item noise is an item effect every seed shares (the second part)."""
    seeds, n = diffs.shape
    v_seeds, seed_df = trained * (borrowed["variance"] or 0.0) / seeds, borrowed["df"]
    v_items = shared_item_variance(diffs)
    t_seed, t_item = scipy_stats.t.ppf(0.5 + level / 2, [max(seed_df, 1), n - 1])
    half = math.sqrt(t_seed ** 2 * v_seeds + t_item ** 2 * v_items)
    method = f"borrowed seed variance (t, {seed_df} df) + shared item effects (t, {n - 1} df)"
    floor = max((high - low) / 2 for low, high in per_seed_ci)
    if floor >= half:
        half, method = floor, "widest per-seed interval (floor)"
    mean = float(diffs.mean())
    return {"mean": mean, "ci95": (mean - half, mean + half) if half > 0 else None, "df": seed_df,
            "method": method, "seeds": seeds, "n": n, "variance": {"seeds": v_seeds, "items": v_items}}


def seed_mean(values: Sequence[float], per_seed_ci: Sequence[Sequence[float] | None], borrowed: dict,
              level: float = 0.95) -> dict:
    """One arm's score averaged over its training seeds (``values``: one model's score per seed), with an
    interval built as :func:`seed_level`'s: the borrowed training-seed variance of one model's mean score
    over S seeds (``borrowed``: :func:`seed_variance`, t with its df) and the item sampling one seed's score
    carries, taken as the widest per-seed interval's half-width (``per_seed_ci``: each model's 95% interval
    over the items), added in quadrature. Never narrower than the widest per-seed interval; no interval
    (``ci95`` None) rather than a zero-width one when neither part is known. Why not a t-interval over the
    seeds' scores: at two seeds it rests on one degree of freedom (t = 12.7), and seeds that happen to score
    the same give a zero-width interval."""
    seeds = len(values)
    mean = float(sum(values)) / seeds
    v_seeds, seed_df = (borrowed.get("variance") or 0.0) / seeds, borrowed.get("df", 0)
    t_seed = float(scipy_stats.t.ppf(0.5 + level / 2, max(seed_df, 1)))
    item = max(((ci[1] - ci[0]) / 2 for ci in per_seed_ci if ci and None not in ci), default=0.0)
    half = math.sqrt(t_seed ** 2 * v_seeds + item ** 2)
    return {"mean": mean, "ci95": (mean - half, mean + half) if half > 0 else None, "df": seed_df,
            "seeds": seeds}


def shared_item_variance(diffs: np.ndarray) -> float:
    """Variance of the mean difference from item effects all seeds share: (MS items - MS residual) / (n S)
    from a seeds x items random-effects ANOVA of ``diffs``, zero when negative. Why: an item the arm gains
    at every seed stays gained however many seeds are averaged, so that part shrinks with new items only."""
    seeds, n = diffs.shape
    item_means = diffs.mean(axis=0)
    residual = diffs - diffs.mean(axis=1, keepdims=True) - item_means + diffs.mean()
    ms_items = seeds * float(item_means.var(ddof=1))
    ms_res = float((residual ** 2).sum()) / ((seeds - 1) * (n - 1))
    return max(0.0, ms_items - ms_res) / (n * seeds)


def replication_test(diffs: np.ndarray, permutations: int = 2000, rng_seed: int = 0, *,
                     shuffle_all: bool = False) -> dict:
    """Do the same items flip the same way at every seed more often than chance?

    An item flips at seed s when the arm and the reference score it differently (sign of ``diffs[s][i]``).
    Statistic: same-direction coincidences, summed over pairs of seeds (at two seeds: items gained at both
    plus items lost at both). Null: at each seed independently, the directions are shuffled among the items
    that flipped there. Why not shuffle over all items: items differ in how often any two models disagree
    on them (hard-but-possible items flip at every seed, in both directions), so a shuffle over all items
    would call that replication even with no arm effect at all. Exact when, at each seed, the arm moves
    every item's odds by the same factor (no item-specific effect), whatever the average effect. One-sided
    p from the permutations (seeded: deterministic). ``shuffle_all`` shuffles over all items instead, only
    to show why not (:func:`simulate_replication`)."""
    signs = np.sign(diffs).astype(np.int8)  # int8: the null holds permutations x seeds x items of them
    if not shuffle_all:  # an item that flips at no seed adds to neither count: leave it out (memory, time)
        signs = signs[:, signs.any(axis=0)]
    rng = np.random.default_rng(rng_seed)
    null = np.zeros((permutations, *signs.shape), dtype=np.int8)
    for s, row in enumerate(signs):
        flipped = np.arange(len(row)) if shuffle_all else np.flatnonzero(row)
        null[:, s, flipped] = rng.permuted(np.tile(row[flipped], (permutations, 1)), axis=1)
    observed, coincidences = _same_direction(signs[None])
    same = _same_direction(null)[0]
    sd = float(same.std())
    z = (float(observed[0]) - float(same.mean())) / sd if sd > 0 else None
    return {"observed": int(observed[0]), "coincidences": int(coincidences[0]), "null_mean": float(same.mean()),
            "null_sd": sd, "z": z, "p": (1 + int((same >= observed[0]).sum())) / (1 + permutations),
            "permutations": permutations, "seeds": signs.shape[0], "meaning": REPLICATION_MEANING}


def _same_direction(signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(same-direction, all) coincidences of flips over pairs of seeds; ``signs``: (batch, seeds, items)."""
    agree = ((signs.sum(axis=1) ** 2 - (signs ** 2).sum(axis=1)) / 2).sum(axis=-1)  # same minus opposite
    flips = np.abs(signs)
    both = ((flips.sum(axis=1) ** 2 - flips.sum(axis=1)) / 2).sum(axis=-1)
    return (both + agree) / 2, both


def per_seed_ci(a: Sequence[float], b: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """``paired_comparison(a, b, z)["ci95"]`` without its McNemar test (the simulation's hot path)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == len(b) and np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all():
        return _bonett_price_paired(int((a > b).sum()), int((a < b).sum()), len(a), z)
    return paired_comparison(a.tolist(), b.tolist(), z)["ci95"]


# Coverage simulation (docs/statistics.md, tests/test_seed_stats.py): items of varied difficulty, a
# training-seed shift per model, no true arm effect. Logit of a correct answer = item + model shift.
ITEM_MEAN, ITEM_SD = -1.0, 3.5  # about 40% correct, about 20% of items discordant between two models


def _logit_shift_sd(points: float) -> float:
    """Logit-scale SD of a model's shift that moves its mean score by ``points`` SD (bisection)."""
    items = ITEM_MEAN + ITEM_SD * scipy_stats.norm.ppf((np.arange(400) + 0.5) / 400)
    draws = scipy_stats.norm.ppf((np.arange(101) + 0.5) / 101)

    def sd(tau):
        return float(expit(items[None] + tau * draws[:, None]).mean(axis=1).std() * 100)
    low, high = 0.0, 10.0
    for _ in range(40):
        low, high = (low, (low + high) / 2) if sd((low + high) / 2) > points else ((low + high) / 2, high)
    return (low + high) / 2


def simulate_run(rng: np.random.Generator, seeds: int, tau: float, arms: int = 2, items: int = 164,
                 effect: float = 0.0, untrained: bool = False) -> dict:
    """One run's scores ``{arm: {seed: [0/1 per item]}}``: no true difference between arms, except that
    ``arm1``'s log-odds are raised by ``effect`` (a number, or one per item). ``untrained`` adds ``"seed"``:
    the model every arm was trained from, no shift and no effect, one set of answers (``{0: [...]}``)."""
    item_logits = rng.normal(ITEM_MEAN, ITEM_SD, items)
    logits = item_logits[None, None] + rng.normal(0, tau, (arms, seeds))[..., None]
    logits[1] += effect
    correct = (rng.random((arms, seeds, items)) < expit(logits)).astype(float)
    out = {f"arm{a}": dict(enumerate(correct[a])) for a in range(arms)}
    if untrained:
        out["seed"] = {0: (rng.random(items) < expit(item_logits)).astype(float)}
    return out


def _true_gap(tau: float, effect: float = 0.0, against_seed: bool = False) -> float:
    """arm1's expected score minus arm0's (or the untrained model's), over items and seed shifts
    ~ Normal(0, tau^2), arm1's log-odds raised by ``effect`` (quadrature). Against the untrained model it is
    not 0 even with no effect: the logistic curve bends, so symmetric shifts move the mean score."""
    items = ITEM_MEAN + ITEM_SD * scipy_stats.norm.ppf((np.arange(2000) + 0.5) / 2000)
    shifts = tau * scipy_stats.norm.ppf((np.arange(201) + 0.5) / 201)[:, None]
    reference = expit(items[None] + (0.0 if against_seed else shifts))
    return float(expit(items[None] + shifts + effect).mean() - reference.mean())


def simulate_coverage(seeds=(2, 3, 5), points=(0, 3, 6, 10, 15), reps: int = 1000, arms: int = 2,
                      items: int = 164, old: bool = True, rng_seed: int = 0, against_seed: bool = False,
                      effect: float = 0.0) -> list[dict]:
    """Share of 95% intervals (arm1 - arm0, no true effect) that cover the true difference, and their median
    width, per scenario; ``old`` adds ``sdft.base.stats.pooled_paired`` on the same runs. ``against_seed``:
    arm1 - the untrained seed model instead (``trained=1``, the seed variance still borrowed from every
    trained arm). ``effect``: arm1's log-odds raised by that much. Truth: :func:`_true_gap`."""
    rows = []
    for pts in points:
        tau = _logit_shift_sd(pts)
        truth = _true_gap(tau, effect, against_seed)
        for s in seeds:
            rng, new, was, widest = np.random.default_rng([rng_seed, s, pts]), [], [], []
            for _ in range(reps):
                scores = simulate_run(rng, s, tau, arms, items, effect, untrained=against_seed)
                reference = scores.pop("seed", None)
                borrowed = seed_variance(scores)
                pair = [(scores["arm1"][k], reference[0] if against_seed else scores["arm0"][k]) for k in range(s)]
                diffs = np.array([np.subtract(a, b) for a, b in pair])
                per_seed = [per_seed_ci(a, b) for a, b in pair]
                low, high = seed_level(diffs, per_seed, borrowed, trained=1 if against_seed else 2)["ci95"]
                new.append((low - truth, high - truth))
                widest.append(max(high - low for low, high in per_seed) * 100)
                if old:
                    low, high = pooled_paired(diffs.tolist())["ci95"]
                    was.append((low - truth, high - truth))
            rows.append({"seeds": s, "points": pts, "arms": arms, "reps": reps, **_summary("new", new),
                         "per_seed_width": float(np.median(widest)),
                         **(_summary("old", was) if old else {})})
    return rows


def _replication_cases(items: int = 164) -> dict[str, np.ndarray | float]:
    third = np.arange(items) % 6
    return {"none": 0.0, "+1 on every item": 1.0,
            **{f"±{e} on a third of items": np.where(third == 0, e, np.where(third == 1, -e, 0.0)) for e in (1, 2)}}


def simulate_replication(seeds=(2, 3), runs: int = 200, permutations: int = 300, rng_seed: int = 0) -> list[dict]:
    """Share of runs whose replication p < 0.05, shuffling among flipped items and over all items, for arm1
    log-odds effects (:func:`_replication_cases`): none, the same on every item (no item-specific effect:
    false alarms), or item-specific (power); with the mean difference each gives."""
    rows = []
    for k, (case, effect) in enumerate(_replication_cases().items()):
        for s in seeds:
            rng, p, p_all, means = np.random.default_rng([rng_seed, s, k]), [], [], []
            for run in range(runs):
                scores = simulate_run(rng, s, 0.0, effect=effect)
                diffs = np.array([np.subtract(scores["arm1"][i], scores["arm0"][i]) for i in range(s)])
                p.append(replication_test(diffs, permutations, run)["p"])
                p_all.append(replication_test(diffs, permutations, run, shuffle_all=True)["p"])
                means.append(diffs.mean())
            rows.append({"case": case, "seeds": s, "mean": float(np.mean(means)) * 100,
                         "flipped": float(np.mean(np.array(p) < 0.05)), "all": float(np.mean(np.array(p_all) < 0.05))})
    return rows


def _summary(name: str, intervals: list) -> dict:
    lows, highs = np.array([c[0] for c in intervals]), np.array([c[1] for c in intervals])
    return {f"{name}_coverage": float(((lows <= 0) & (0 <= highs)).mean()),
            f"{name}_width": float(np.median(highs - lows) * 100)}


def coverage_table(rows: list[dict]) -> str:
    """Markdown table of :func:`simulate_coverage` rows (the one in docs/statistics.md)."""
    old = "old_coverage" in rows[0]
    head = "| seeds | seed SD (points) | coverage | median width | widest per-seed width" + (
        " | old `pooled_paired` coverage | old median width" if old else "") + " |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in sorted(rows, key=lambda r: (r["seeds"], r["points"])):
        cells = [r["seeds"], r["points"], f"{r['new_coverage']:.1%}", f"{r['new_width']:.1f}",
                 f"{r['per_seed_width']:.1f}"]
        cells += [f"{r['old_coverage']:.1%}", f"{r['old_width']:.1f}"] if old else []
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def _main(argv: list[str]) -> None:
    if argv[:1] == ["replication"]:
        print("| arm's log-odds effect | seeds | mean difference (points) | p < 0.05, shuffle among flipped "
              "items | p < 0.05, shuffle over all items |\n|---|---|---|---|---|")
        for r in simulate_replication():
            print(f"| {r['case']} | {r['seeds']} | {r['mean']:+.1f} | {r['flipped']:.1%} | {r['all']:.1%} |")
        return
    against_seed = "against-seed" in argv
    args = [int(a) for a in argv if a != "against-seed"][:2]
    reps, arms = (args + [2000, 2][len(args):])[:2]
    what = ("arm1 − the untrained seed model, coverage of arm1's true gap to it" if against_seed
            else "arm1 − arm0, coverage of 0")
    print(f"No true effect; {arms} trained arms, 164 items, {reps} simulated runs per row; 95% intervals of "
          f"{what}; median widths in points.\n")
    print(coverage_table(simulate_coverage(reps=reps, arms=arms, against_seed=against_seed)))


# python -m sdft.base.seed_stats [reps] [arms] [against-seed] | python -m sdft.base.seed_stats replication
if __name__ == "__main__":
    _main(sys.argv[1:])
