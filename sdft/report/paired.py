"""The report's paired sections, and ``sdft stats RUN_DIR``, which recomputes them from the per-item files alone.

Each model trained on rewrites (or by another arm) is compared with vanilla trained on the same examples at
the same training seed, item by item; every model is compared with the seed model it was trained from.
Per-item scores come from each evaluation's ``item_scores/TASK.jsonl`` (:mod:`sdft.base.item_scores`); the
report reads the generations files instead for evaluations made before those files existed, ``sdft stats``
refuses them (it must not read answer text). An arm trained at several seeds adds a seed-level row and an
item-replication test against vanilla, and a seed-level row against the seed model
(:mod:`sdft.base.seed_stats`, docs/statistics.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from sdft.base import item_scores, layout, seeds
from sdft.base.errors import ConfigError
from sdft.base.layout import Arm, Manifest
from sdft.base.seed_stats import REPLICATION_MEANING, replication_test, seed_level, seed_variance
from sdft.base.stats import paired_comparison
from sdft.base.store import read_jsonl
from sdft.report.config import StatsConfig
from sdft.report.tables import section, table

# {model label: {task: (headline metric, {item id: score})}}
Scores = dict[str, dict[str, tuple[str, dict[str, float]]]]
# {task: (metric, {id: our score}, {id: vanilla's score})}, on the items both models were scored on
Pairs = dict[str, tuple[str, dict[str, float], dict[str, float]]]


def stats(config: StatsConfig) -> dict:
    """``sdft stats``: the paired sections of ``run_dir``'s report from per-item files, no generations read."""
    if not config.run_dir or not (Path(config.run_dir) / layout.MANIFEST).is_file():
        raise ConfigError(f"'{config.run_dir}' is not a finished run folder (no {layout.MANIFEST})")
    run_dir = Path(config.run_dir)
    manifest = Manifest.read(run_dir)
    scores = load_scores(manifest, run_dir)
    paired = (paired_section(manifest, scores)
              or "No comparisons with vanilla: no model of this run was trained against vanilla.\n")
    text = "\n".join(part for part in (paired, seed_section(manifest, scores)) if part)
    result = {"markdown": text}
    if config.export:
        result["exported"] = export_scores(manifest, run_dir, Path(config.export))
    return result


def export_scores(manifest: Manifest, run_dir: Path, dest: Path) -> int:
    """Copy the manifest and every evaluation's per-item files into ``dest`` at the same relative places, so
    ``sdft stats dest`` gives the same section; the number of per-item files copied. No answer text: the
    per-item files hold ids and verdicts (``sdft.base.item_scores``), the manifest the aggregate results."""
    if dest.resolve() == run_dir.resolve() or run_dir.resolve() in dest.resolve().parents:
        raise ConfigError(f"--export {dest}: give a folder outside the run folder {run_dir}")
    copied = 0
    for arm in manifest.arms.values():
        source = arm.eval.path(run_dir)
        for entry in arm.eval.result.get("tasks", {}).values():
            if entry.get("item_scores") and (source / entry["item_scores"]).is_file():
                # where ``layout.locate`` looks inside a run folder: stage/LABEL-KEY
                target = dest.joinpath(*Path(arm.eval.dir).parts[-2:]) / entry["item_scores"]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / entry["item_scores"], target)
                copied += 1
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / layout.MANIFEST, dest / layout.MANIFEST)
    return copied


def summarize(result: dict) -> str:
    exported = f"\n(per-item files of {result['exported']} task evaluations exported)" if "exported" in result else ""
    return result["markdown"].rstrip("\n") + exported


def load_scores(manifest: Manifest, run_dir: Path, generations: dict | None = None) -> Scores:
    """Every model's per-item scores by task, from its per-item files. ``generations`` (the report's
    ``load_generations`` map) is read for a task evaluated before per-item files existed; without it such a
    task is refused. Tasks with neither (an external harness, a skipped task) are left out."""
    scores: Scores = {}
    for label, arm in manifest.arms.items():
        scores[label] = {}
        for task, entry in arm.eval.result.get("tasks", {}).items():
            records = _item_records(arm, run_dir, task, entry)
            if records is None and generations is not None and task in generations.get(label, {}):
                records = generations[label][task][1]
            elif records is None and generations is None and entry.get("generations"):
                raise ConfigError(f"{arm.eval.path(run_dir)}: no per-item scores for task {task} "
                                  f"({layout.ITEM_SCORES}/{task}.jsonl; evaluated before sdft wrote them): "
                                  "`sdft report` reads its generations instead, or evaluate it again")
            if records is not None:
                scores[label][task] = (entry.get("metric", "score"), item_scores.by_id(records))
    return scores


def _item_records(arm: Arm, run_dir: Path, task: str, entry: dict) -> list[dict] | None:
    path = arm.eval.path(run_dir) / str(entry.get("item_scores") or "")
    return read_jsonl(path) if entry.get("item_scores") and path.is_file() else None


# ---------------------------------------------------------------- the section

def paired_section(manifest: Manifest, scores: Scores) -> str:
    """Per-seed rows for every trained model against its vanilla; for arms at several seeds, a seed-level
    row per task and the item-replication table."""
    rows, replication, borrowed_from = [], [], {}
    borrowed = _borrowed(manifest, scores)
    for name, members in seeds.groups(manifest.arms.values()).items():
        per_seed = []
        for arm in members:
            baseline = vanilla_for(manifest, arm)
            if arm.label in ("seed", baseline) or baseline is None:
                continue
            pairs = _pairs(scores[arm.label], scores[baseline])
            rows += _per_seed_rows(f"{arm.label} − {baseline}", pairs)
            per_seed.append(pairs)
            against = seeds.group_name(manifest.arms[baseline])
        if len(per_seed) > 1:
            for task, level, reps in _over_seeds(f"{name} − {against}", per_seed, borrowed):
                rows.append(level)
                replication.append(reps)
                borrowed_from[task] = borrowed[task]
    if not rows:
        return ""
    title, what = (("Each arm vs vanilla, item by item", "Each model (rewrites, other arms)")
                   if manifest.has_other_arms else ("Rewrites vs original targets, item by item",
                                                    "Each model trained on rewrites"))
    caption = (f"{what} against vanilla trained on the same examples, on the same evaluation items: the "
               "difference of their scores with a paired 95% interval, how many items the first scored higher / "
               "lower on, and for 0/1 scores the exact McNemar p-value (interval: Bonett-Price adjusted Wald for "
               "paired proportions). A row comparing one pair of trained models measures evaluation noise only, "
               "not training-seed variance.")
    if seeds.several(manifest):
        caption += SEED_LEVEL_NOTE + _borrow_note(borrowed_from)
    text = section(title, ["comparison", "task/metric", "items", "difference (points) [95%]", "better", "worse",
                           "McNemar p"], rows, caption)
    if replication:
        text += (f"\n### Same items at every seed?\n\n{table(REPLICATION_HEADER, replication)}\n\n"
                 f"{REPLICATION_NOTE}\n")
    return text


# Why this interval: sdft.base.seed_stats.seed_level and docs/statistics.md.
SEED_LEVEL_NOTE = (" Each seed's models are compared with vanilla trained at the same seed. Rows (N seeds): the mean "
                   "difference over every seed and item (items all seeds share; items × seeds in the items column, "
                   "better / worse summed over seeds) with a 95% interval for a new draw of evaluation items and of "
                   "training seeds: the training-seed variance of one model's mean score, borrowed from every arm "
                   "of the run trained at several seeds except interp (a scaled copy of vanilla), plus the item "
                   "effects all seeds share, each with its own t quantile; never narrower than the widest per-seed "
                   "interval, which it is where marked (floor). No McNemar test there: the pairs of different "
                   "seeds share items. Method and coverage: docs/statistics.md.")
REPLICATION_HEADER = ["comparison", "task/metric", "seeds", "items flipped at two seeds", "same direction",
                      "same direction by chance", "p"]
REPLICATION_NOTE = ("An item flips at a seed when the arm and vanilla trained at that seed score it differently. "
                    "Items flipped at two seeds: items that flipped at both seeds of a pair (pairs of seeds summed "
                    "with three or more seeds); same direction: those gained at both plus those lost at both; by "
                    "chance: mean ± SD of that count when, at each seed, the directions are shuffled among the "
                    "items that flipped there (2000 permutations); p: one-sided permutation p-value. "
                    + REPLICATION_MEANING + " A large p is no evidence that no such effect exists: with few seeds "
                    "few items flip at two seeds, and the test finds only strong item-specific effects.")


def seed_section(manifest: Manifest, scores: Scores) -> str:
    """Every model against the seed model it was trained from, item by item: what fine-tuning gained on the
    target and cost elsewhere. An arm at several training seeds gets one row per task over its seeds."""
    seed = next((label for label, arm in manifest.arms.items() if arm.recipe == "seed"), None)
    if seed is None or not scores.get(seed):
        return ""
    rows, borrowed, borrowed_from = [], _borrowed(manifest, scores), {}
    for name, members in seeds.groups(manifest.arms.values()).items():
        models = [m for m in members if m.label != seed]
        per_seed = [_pairs(scores[m.label], scores[seed]) for m in models]
        over_seeds = set()
        if len(models) > 1:
            for task, diffs, level in _seed_levels(per_seed, borrowed, trained=1):
                each = ", ".join(f"s{m.seed} {d * 100:+.1f}" for m, d in zip(models, diffs.mean(axis=1)))
                rows.append([f"{name} − seed ({len(models)} seeds)", f"{task}/{per_seed[0][task][0]}",
                             f"{diffs.shape[1]} × {len(models)}", f"{_level_cell(level)}; {each}",
                             int((diffs > 0).sum()), int((diffs < 0).sum()), "–"])
                over_seeds.add(task)
                borrowed_from[task] = borrowed.get(task, NOTHING_BORROWED)
        for model, pairs in zip(models, per_seed):  # one seed, or a task not every seed has
            rows += _per_seed_rows(f"{model.label} − seed", {t: p for t, p in pairs.items() if t not in over_seeds})
    if not rows:
        return ""
    caption = ("Each model against the seed model, on the same evaluation items: what fine-tuning gained on the "
               "target and cost on every other task (paired 95% interval, items scored higher / lower, exact "
               "McNemar p for 0/1 scores). A row of one model: its interval covers item sampling, not training-seed "
               "variance.")
    if borrowed_from:
        caption += SEED_ROW_NOTE + _borrow_note(borrowed_from)
    return section("Each model vs the seed, item by item", ["comparison", "task/metric", "items",
                   "difference (points) [95%]", "better", "worse", "McNemar p"], rows, caption)


# Why trained=1 and no replication test: sdft.base.seed_stats.seed_level and docs/statistics.md.
SEED_ROW_NOTE = (" Rows (N seeds): the mean difference over every seed and item (items all seeds share; items × seeds "
                 "in the items column, better / worse summed over seeds; no McNemar test: the seeds share items) "
                 "with a 95% interval for a new draw of items and of training seeds: the training-seed variance "
                 "of one model's mean score, borrowed from every arm of the run trained at several seeds except "
                 "interp and counted once (the seed model is one fixed model), plus the item effects all seeds "
                 "share (the seed model's own item noise among them), each with its own t quantile; never "
                 "narrower than the widest per-seed interval, which it is where marked (floor); then each seed's "
                 "difference. No replication test: the seed model's one score per item is in every seed's "
                 "difference, so flips agree in direction by construction (always, for 0/1 scores). Method and "
                 "coverage: docs/statistics.md.")
NOTHING_BORROWED = {"variance": None, "df": 0, "arms": []}


def _borrow_note(borrowed: dict[str, dict]) -> str:
    parts = [f"{task}: {', '.join(b['arms']) or 'none'} ({b['df']} df)" for task, b in sorted(borrowed.items())]
    return " Seed variance borrowed from: " + "; ".join(parts) + "." if parts else ""


def _per_seed_rows(comparison: str, pairs: Pairs) -> list[list]:
    rows = []
    for task, (metric, ours, theirs) in sorted(pairs.items()):
        c = paired_comparison(list(ours.values()), list(theirs.values()))
        low, high = c["ci95"]
        difference = (f"{c['mean'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]" if high > low
                      else f"{c['mean'] * 100:+.1f} (no spread over items: no interval)")
        rows.append([comparison, f"{task}/{metric}", c["n"], difference, c["wins"], c["losses"],
                     "–" if c["p"] is None else f"{c['p']:.3f}"])
    return rows


def _over_seeds(comparison: str, per_seed: list[Pairs], borrowed: dict[str, dict]) -> list[tuple[str, list, list]]:
    """``(task, seed-level row, replication row)`` per task the arm and vanilla share at every seed, on the
    items every seed shares (two or more)."""
    out = []
    for task, diffs, level in _seed_levels(per_seed, borrowed, trained=2):
        reps = replication_test(diffs)
        name, metric = f"{comparison} ({len(per_seed)} seeds)", f"{task}/{per_seed[0][task][0]}"
        out.append((task, [name, metric, f"{diffs.shape[1]} × {len(per_seed)}", _level_cell(level),
                           int((diffs > 0).sum()), int((diffs < 0).sum()), "–"],
                    [name, metric, len(per_seed), reps["coincidences"], reps["observed"],
                     f"{reps['null_mean']:.1f} ± {reps['null_sd']:.1f}", f"{reps['p']:.3f}"]))
    return out


def _seed_levels(per_seed: list[Pairs], borrowed: dict[str, dict], trained: int):
    """``(task, diffs[seed][item], seed_level row)`` per task every seed's pair has, on the items every seed
    shares (two or more); ``trained``: :func:`sdft.base.seed_stats.seed_level`'s."""
    for task in sorted(set.intersection(*(set(p) for p in per_seed))):
        ids = sorted(set.intersection(*(set(p[task][1]) & set(p[task][2]) for p in per_seed)))
        if len(ids) < 2:
            continue
        ours = [[p[task][1][i] for i in ids] for p in per_seed]
        theirs = [[p[task][2][i] for i in ids] for p in per_seed]
        diffs = np.subtract(ours, theirs)
        per_seed_ci = [paired_comparison(a, b)["ci95"] for a, b in zip(ours, theirs)]
        yield task, diffs, seed_level(diffs, per_seed_ci, borrowed.get(task, NOTHING_BORROWED), trained=trained)


def _level_cell(level: dict) -> str:
    if level["ci95"] is None:  # only scores that never differ; a zero-width interval would claim certainty
        return f"{level['mean'] * 100:+.1f} (no item or seed differs: no interval)"
    low, high = level["ci95"]
    floor = " (floor)" if level["method"].endswith("(floor)") else ""
    return f"{level['mean'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]{floor}"


def borrow_groups(manifest: Manifest) -> dict[str, list[Arm]]:
    """The arms whose spread over training seeds estimates the training-seed variance: every arm trained at
    several seeds, except interp (the vanilla adapter of the same seed scaled: not independent of vanilla)."""
    return {name: members for name, members in seeds.groups(manifest.arms.values()).items()
            if len(members) > 1 and all(m.trained and m.recipe != "interp" for m in members)}


def _borrowed(manifest: Manifest, scores: Scores) -> dict[str, dict]:
    """``{task: seed_variance(...)}`` over :func:`borrow_groups`, on the items every such model has."""
    out = {}
    groups = borrow_groups(manifest)
    tasks = {task for members in groups.values() for m in members for task in scores[m.label]}
    for task in sorted(tasks):
        models = {name: [m for m in members if task in scores[m.label]] for name, members in groups.items()}
        models = {name: found for name, found in models.items() if len(found) > 1}
        if not models:
            continue
        ids = sorted(set.intersection(*(set(scores[m.label][task][1]) for found in models.values() for m in found)))
        if len(ids) < 2:
            continue
        out[task] = seed_variance({name: {m.label: [scores[m.label][task][1][i] for i in ids] for m in found}
                                   for name, found in models.items()})
    return out


def _pairs(ours: dict, theirs: dict) -> Pairs:
    out = {}
    for task in set(ours) & set(theirs):
        (metric, a), b = ours[task], theirs[task][1]
        ids = sorted(set(a) & set(b))
        if ids:
            out[task] = (metric, {i: a[i] for i in ids}, {i: b[i] for i in ids})
    return out


def vanilla_for(manifest: Manifest, arm: Arm) -> str | None:
    """Vanilla (the "mix" recipe at mix 0) trained on as many examples as ``arm``, with its training seed."""
    return next((label for label, other in manifest.arms.items()
                 if other.recipe == "mix" and other.mix_ratio == 0 and other.sample_size == arm.sample_size
                 and other.seed == arm.seed),
                None)
