"""Arms of an experiment: the ways of fine-tuning that ``sdft run`` trains and compares on one forgetting suite.

=================  =====================================================================================
``vanilla``        fine-tune on the task's own responses (mix ratio 0)
``sdft``           fine-tune on the seed's accepted rewrites (Yang et al. 2024; mix ratio 1, plus every
                   ``mix_ratios`` / ``sample_sizes`` sweep point)
``onpolicy``       on-policy self-distillation (Shenfeld et al. 2026) through TRL's SDFTTrainer
``replay``         vanilla plus a share of general examples (a dataset, or the seed's own answers)
``interp``         WiSE-FT: the vanilla adapter scaled by each alpha (no extra training)
``sdft+replay``    rewrites plus replay; ``onpolicy+replay`` likewise
``sdft-guard``     SDFT on a distillation with the format guard (``sdft distill --format-guard``; beyond the
                   paper): rewrites that open or run unlike the seed's own answers keep the original
``self-answer``    the seed's own answer where it passes the filter, else the accepted rewrite, else the
                   original (``sdft distill --self-answer``; beyond the paper)
``sdft-prose``     SDFT's rewrites with their list enumeration removed (``sdft train --prose-targets``): the
                   same words as prose, a training ablation of the rewrites' format (beyond the paper)
=================  =====================================================================================

Every arm trains on the same examples (the distilled file: the rewrite arms read its rewrites, the others
its original responses), with the same ``train`` section, and gets the same evaluation, shift analysis
and paired comparison with vanilla; ``sdft-guard`` and ``self-answer`` read their own distillation of the same
examples (the run's ``distill`` section plus the arm's options). This module turns a run config's ``arms`` and
its ``replay``, ``onpolicy``, ``guard`` and ``interp`` sections into the list of models to build; it knows
nothing of folders.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from sdft.base.config import field, from_dict
from sdft.base.errors import ConfigError
from sdft.distill.config import DistillConfig
from sdft.train.config import TrainConfig
from sdft.train.interp import check_alphas

ARMS = ("vanilla", "sdft", "onpolicy", "replay", "interp", "sdft+replay", "onpolicy+replay", "sdft-guard",
        "self-answer", "sdft-prose")
DEFAULT_ARMS = ["vanilla", "sdft"]
# Arms that learn from the distillation's targets, and their mix ratio.
_REWRITES = {"sdft": 1.0, "sdft+replay": 1.0, "sdft-guard": 1.0, "self-answer": 1.0, "sdft-prose": 1.0}


def _section_of(config: type, prefix: str, **defaults) -> type:
    """A run-config section declared by a stage config's ``prefix``-ed settings: those fields without the prefix
    (``replay_data`` -> ``data``), their types, help and key rules, with the section's own ``defaults``."""
    hints = typing.get_type_hints(config)
    fields = []
    for f in dataclasses.fields(config):
        if f.name.startswith(prefix):
            name = f.name.removeprefix(prefix)
            default = defaults.get(name, f.default)
            fields.append((name, hints[f.name], dataclasses.field(default=default, metadata=f.metadata)))
    return dataclasses.make_dataclass(f"{prefix.strip('_').title()}Section", fields)


# The ``replay`` section takes ``sdft train``'s --replay-* settings (``ReplaySettings``) without the prefix
# (data, ratio, source, max_new_tokens, backend, precision); a replay arm replays one general example per four by
# default.
ReplaySection = _section_of(TrainConfig, "replay_", ratio=0.25)
# The ``onpolicy`` section: ``sdft train``'s --onpolicy-* settings without the prefix.
OnpolicySection = _section_of(TrainConfig, "onpolicy_")


@dataclass
class GuardSection:
    """The ``guard`` section: the format guard's length bounds (``sdft distill --guard-*``, without the prefix)."""

    min_length_ratio: float = field(0.5, "shortest rewrite accepted, as a share of the seed's own answer's length")
    max_length_ratio: float = field(2.0, "longest rewrite accepted, likewise")


@dataclass
class InterpSection:
    """The ``interp`` section: WiSE-FT alphas (0 = seed, 1 = vanilla)."""

    alphas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75], help="weights of the vanilla change")


@dataclass
class Point:
    """One model to train: its label, arm, mix ratio, sample size, and the train settings it changes."""

    label: str
    arm: str
    mix_ratio: float
    sample_size: int | None = None
    overrides: dict = dataclasses.field(default_factory=dict)
    distill: dict = dataclasses.field(default_factory=dict)  # DistillConfig settings of its own distillation

    @property
    def recipe(self) -> str:
        """The manifest's name for how the model is made: "mix" for vanilla, SDFT and their mixtures (the
        distilled file's original or rewritten targets), the arm's own name otherwise."""
        return "mix" if self.arm in ("vanilla", "sdft", "mix") else self.arm

    @property
    def params(self) -> dict:
        """What distinguishes the model within its recipe (``sdft.base.layout.Arm.params``)."""
        if self.recipe == "mix":
            return {"mix_ratio": self.mix_ratio, "sample_size": self.sample_size}
        return {"targets": "rewrites" if self.mix_ratio else "originals", **self.overrides, **self.distill}


_SECTION_USERS = {"replay": lambda arm: "replay" in arm, "onpolicy": lambda arm: "onpolicy" in arm,
                  "interp": lambda arm: arm == "interp", "guard": lambda arm: arm == "sdft-guard"}


def unused_sections(arms: list[str], sections: dict) -> list[str]:
    """The arm sections that are set but that no arm in ``arms`` reads."""
    return [name for name, uses in _SECTION_USERS.items() if sections.get(name) and not any(map(uses, arms))]


def check(arms: list[str], sections: dict, train_section: dict, distill_section: dict | None = None) -> None:
    """Refuse unknown or contradictory arms and unused sections, and build every arm's train settings now."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"unknown arm(s) {', '.join(unknown)}; known arms: {', '.join(ARMS)}")
    if len(set(arms)) != len(arms) or not arms:
        raise ConfigError(f"'arms' must list each arm once, at least one: got {arms}")
    if "interp" in arms and "vanilla" not in arms:
        raise ConfigError("the interp arm scales the vanilla adapter: add vanilla to 'arms'")
    if "interp" in arms and train_section.get("method") == "full":
        raise ConfigError("the interp arm scales a LoRA adapter; with train method full it is not available")
    for name in unused_sections(arms, sections):
        raise ConfigError(f"section '{name}' is set but no arm uses it (arms: {', '.join(arms)})")
    replay = replay_section(sections)
    if any("replay" in a for a in arms) and not replay.data:
        raise ConfigError("the replay arms need 'replay: {data: FILE}' (a general dataset to replay)")
    interp_section(sections)

    for point in train_points(arms, sections, mix_ratios=[], sample_sizes=[]):
        overrides = train_overrides(point, bool(train_section.get("padding_free")))
        from_dict(TrainConfig, {**train_section, "data": "-", "out": "-", **overrides},
                  f"arm '{point.arm}' (train section + its options)")
        if point.distill:
            where = f"arm '{point.arm}' (distill section + its options)"
            try:
                from_dict(DistillConfig, {**(distill_section or {}), "data": "-", "out": "-", **point.distill}, where)
            except ConfigError as exc:  # a check of the settings together names no section: say which
                raise ConfigError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None


def replay_section(sections: dict) -> ReplaySection:
    return from_dict(ReplaySection, sections.get("replay") or {}, "replay section")


def interp_section(sections: dict) -> InterpSection:
    section = from_dict(InterpSection, sections.get("interp") or {}, "interp section")
    return InterpSection(check_alphas(section.alphas))


def _distill_overrides(arm: str, sections: dict) -> dict:
    """The ``DistillConfig`` settings of an arm's own distillation (none: it reads the run's)."""
    if arm == "sdft-guard":
        guard = from_dict(GuardSection, sections.get("guard") or {}, "guard section")
        return {"format_guard": True, "guard_min_length_ratio": guard.min_length_ratio,
                "guard_max_length_ratio": guard.max_length_ratio}
    return {"self_answer": True} if arm == "self-answer" else {}


def _overrides(arm: str, sections: dict) -> dict:
    """The ``TrainConfig`` settings an arm changes."""
    out: dict = {}
    if "onpolicy" in arm:
        out["objective"] = "onpolicy"
        out.update({f"onpolicy_{k}": v for k, v in (sections.get("onpolicy") or {}).items()})
    if arm == "sdft-prose":
        out["prose_targets"] = True
    if "replay" in arm:
        replay = replay_section(sections)
        given = sections.get("replay") or {}
        # The engine's settings only when the section sets them: the arm's params (its manifest entry) and
        # keys stay as they were for runs that never set them.
        out.update({f"replay_{f.name}": getattr(replay, f.name) for f in dataclasses.fields(replay)
                    if f.name not in ("backend", "precision") or f.name in given})
    return out


def train_points(arms: list[str], sections: dict, mix_ratios: list[float], sample_sizes: list[int]) -> list[Point]:
    """Every model to train, vanilla first. ``mix_ratios`` / ``sample_sizes`` sweep the sdft arm as before
    (sizes also for vanilla, so each size has its baseline)."""
    points = []
    if "vanilla" in arms:
        points.append(Point("vanilla", "vanilla", 0.0))
    if "sdft" in arms:
        points += [Point(f"mix{r:g}", "mix", r) for r in sorted(set(mix_ratios) - {0.0, 1.0})]
        points.append(Point("sdft", "sdft", 1.0))
    for arm in arms:
        if arm not in ("vanilla", "sdft", "interp"):
            points.append(Point(arm, arm, _REWRITES.get(arm, 0.0), overrides=_overrides(arm, sections),
                                distill=_distill_overrides(arm, sections)))
    for size in sorted(set(sample_sizes)):
        points += [Point(f"{arm}-n{size}", arm, ratio, size) for arm, ratio in (("vanilla", 0.0), ("sdft", 1.0))
                   if arm in arms]
    return points


def train_overrides(point: Point, padding_free: bool) -> dict:
    """The train settings ``point`` changes in a run whose train section trains ``padding_free``: TRL pads the
    batches of the onpolicy arms' own answers, so those arms train padded whatever the section says."""
    if padding_free and point.overrides.get("objective") == "onpolicy":
        return {**point.overrides, "padding_free": False}
    return point.overrides


def interp_labels(sections: dict) -> list[tuple[str, float]]:
    """``(label, alpha)`` of each interpolated model."""
    return [(f"interp-a{alpha:g}", alpha) for alpha in interp_section(sections).alphas]
