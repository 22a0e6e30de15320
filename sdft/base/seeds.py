"""Training seeds: every trained arm of ``sdft run`` once per seed of the run config's ``train_seeds``.

A model trained with the run's own ``train.seed`` (default 42) keeps its arm's label (``vanilla``,
``sdft``, ``interp-a0.5``), so a run without ``train_seeds`` is named, keyed and reported as before and a
second seed added later reuses every finished stage of the first. Another seed adds ``-s<seed>`` to the
label (``vanilla-s43``). The same arm at several seeds is a *group* named by the bare label: the report
shows its mean and spread over seeds, and the plots the mean with the seeds' range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from sdft.base.errors import ConfigError
from sdft.base.layout import Arm, Manifest
from sdft.base.stats import Metric

MAX_SEED = 2 ** 32 - 1  # numpy's RandomState (seeded by transformers' set_seed) takes no larger seed


def check(seeds: list[int] | None) -> None:
    """One clear line for a ``train_seeds`` list a run cannot use."""
    if seeds is None:
        return
    if not seeds:
        raise ConfigError("'train_seeds' must list at least one seed (or leave it out: train.seed alone)")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"'train_seeds' lists seed {', '.join(map(str, repeated))} more than once: "
                          "a second run with the same seed trains the same model")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ConfigError(f"'train_seeds' must be integers from 0 to {MAX_SEED}, got {bad[0]}")


def check_arm_seeds(arm_seeds: dict, arms: list[str], seeds: list[int]) -> None:
    """One clear line for an ``arm_seeds`` mapping a run cannot use (``seeds``: the run's training seeds)."""
    for arm, chosen in arm_seeds.items():
        if arm not in arms:
            raise ConfigError(f"'arm_seeds' names arm '{arm}', which is not in 'arms' ({', '.join(arms)})")
        if arm == "vanilla":
            raise ConfigError("'arm_seeds' may not name vanilla: every arm is compared with vanilla trained at "
                              "the same seed, so vanilla trains at every seed of 'train_seeds'")
        if not isinstance(chosen, list) or not chosen or not all(type(s) is int for s in chosen):
            raise ConfigError(f"'arm_seeds.{arm}' must list one or more integer seeds, got {chosen!r}")
        if len(set(chosen)) != len(chosen):
            raise ConfigError(f"'arm_seeds.{arm}' lists a seed more than once: {chosen}")
        outside = [s for s in chosen if s not in seeds]
        if outside:
            raise ConfigError(f"'arm_seeds.{arm}' lists seed {outside[0]}, which is not a training seed of the run "
                              f"({', '.join(map(str, seeds))}: 'train_seeds', else train.seed)")


def label(arm_label: str, seed: int, primary: int) -> str:
    """The model's label: the arm's own at the run's ``train.seed``, ``LABEL-s<seed>`` at any other."""
    return arm_label if seed == primary else f"{arm_label}-s{seed}"


def group_name(arm: Arm) -> str:
    """The arm's label without its seed suffix (the label itself for the seed model and old runs)."""
    suffix = f"-s{arm.seed}"
    return arm.label[:-len(suffix)] if arm.seed is not None and arm.label.endswith(suffix) else arm.label


def groups(arms: Iterable[Arm]) -> dict[str, list[Arm]]:
    """``{group name: its models}`` in the order of their first model (the manifest's order)."""
    out: dict[str, list[Arm]] = {}
    for arm in arms:
        out.setdefault(group_name(arm), []).append(arm)
    return out


def several(manifest: Manifest) -> bool:
    """Whether any arm of the run was trained at more than one seed."""
    return any(len(members) > 1 for members in groups(manifest.arms.values()).values())


@dataclass
class SeedMean(Arm):
    """One arm over its training seeds, for plots: metrics are the mean over seeds, with the seeds'
    lowest and highest values as the interval (error bars); shift metrics are averaged (similarities
    pooled). Never written to a manifest."""

    members: list[Arm] = field(default_factory=list)

    def metrics(self) -> dict[str, Metric]:
        per_seed = [m.metrics() for m in self.members]
        common = set.intersection(*(set(m) for m in per_seed))
        out = {}
        for key in sorted(common):
            values = [m[key].value for m in per_seed]
            out[key] = Metric(sum(values) / len(values), [min(values), max(values)], per_seed[0][key].n)
        return out


def collapsed(manifest: Manifest) -> Manifest:
    """The manifest with one model per group (a :class:`SeedMean` where there are several seeds); the
    manifest itself when every arm has one seed."""
    if not several(manifest):
        return manifest
    arms = {}
    for name, members in groups(manifest.arms.values()).items():
        first = members[0]
        arms[name] = first if len(members) == 1 else SeedMean(
            name, first.recipe, first.eval, params=first.params, train=first.train,
            answer_shift=_mean_shift([m.answer_shift for m in members]), members=members)
    return Manifest(name=manifest.name, model=manifest.model, data=manifest.data, task=manifest.task,
                    arms=arms, distill=manifest.distill, system_prompt=manifest.system_prompt)


def _mean_shift(shifts: list[dict | None]) -> dict | None:
    """What the plots read of ``answer_shift``, over seeds: overall similarity means (averaged) and
    per-item values (pooled), and the seed-answer NLL (averaged)."""
    shifts = [s for s in shifts if s]
    if not shifts:
        return None
    overall = {}
    for key in ("bleu4", "rouge_l", "embedding_cosine"):
        entries = [s.get("overall", {}).get(key, {}) for s in shifts]
        means = [e.get("mean") for e in entries]
        overall[key] = {"mean": None if None in means else sum(means) / len(means),
                        "values": [v for e in entries for v in e.get("values", [])]}
    nll = [s.get("seed_likelihood", {}).get("mean") for s in shifts]
    return {"overall": overall, "seed_likelihood": {"mean": None if None in nll else sum(nll) / len(nll)}}
