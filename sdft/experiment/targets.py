"""Where each stage of an ``sdft run`` goes: its key, its folder, and whether it is done.

One place for both readers: :func:`sdft.experiment.pipeline.run` (which runs the stages) and
:mod:`sdft.experiment.plan` (``--dry-run``, which only looks), so the plan names exactly the folders a run
uses. Folders are ``RUN/<stage>/<label>-<first KEY_LENGTH characters of the key>``, keys chained from the
model through distillation and training to evaluation (DEVELOPERS.md, "Stage keys").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from sdft.base import layout, provenance, seeds
from sdft.base.config import keyed_settings, stage_key
from sdft.base.keys import without_old_defaults
from sdft.distill.config import DistillConfig
from sdft.experiment import arms
from sdft.experiment.config import RunConfig
from sdft.tasks import task_revisions
from sdft.train.config import TrainConfig

KEY_LENGTH = 10  # characters of the stage key in a folder name


def stage_done(folder: Path, settings: dict | None = None, same_settings: bool = False) -> dict | None:
    """The result of the finished stage in ``folder``, or None. With ``same_settings`` (a folder whose name
    carries no key of its own: a model's ``compare``), it counts only when done with these ``settings``."""
    done = layout.finished_result(folder)
    recorded = (layout.read_stage(folder) or {}).get("settings")
    if done is not None and same_settings and recorded != provenance.recordable(settings):  # as finish_stage wrote
        return None
    return done


def sweep_points(config: RunConfig) -> list[arms.Point]:
    """Every model to train: each arm, the sdft arm's mix-ratio sweep and the sample sizes."""
    return arms.train_points(config.arms, config.arm_sections, config.mix_ratios, config.sample_sizes)


def eval_stage_key(config, upstream: str) -> str:
    """An evaluation stage's key: its settings, the model's key, and the revisions of its tasks."""
    revisions = without_old_defaults(
        "eval stage", {"task_revisions": task_revisions(config.tasks, limited=config.limit is not None)})
    return stage_key(config, upstream, *([revisions] if revisions else []))


def eval_target(template, run_dir: Path, label: str, adapter: str | None, upstream: str) -> tuple:
    """``(config, key, folder)`` of the evaluation of one model (``adapter`` None: the seed)."""
    config = replace(template, adapter=adapter)
    key = eval_stage_key(config, upstream)
    return config, key, layout.stage_dir(run_dir, layout.EVAL, label, key[:KEY_LENGTH])


def compare_target(seed_eval: Path | str, model_eval: Path | str, config: RunConfig) -> tuple:
    """``(key, folder, settings)`` of a model's comparison with the seed, inside the model's eval folder.
    ``shift_tasks`` is in the settings only when set: comparisons recorded before it existed stay finished."""
    shift = {"vs": "seed", **({"shift_tasks": sorted(config.shift_tasks)} if config.shift_tasks else {})}
    if config.shift:  # likewise: comparisons made before the section existed stay finished
        shift["shift"] = shift_settings(config)
    return stage_key(str(seed_eval), str(model_eval)), Path(model_eval) / layout.COMPARE, shift


def shift_settings(config: RunConfig) -> dict:
    """The ``shift`` section as the comparison uses it: an engine scorer takes the eval section's precision and
    backend options unless the section sets its own, so it reuses the engine that evaluated the model."""
    shift = dict(config.shift)
    if shift.get("likelihood_backend") == "vllm":
        shift.setdefault("likelihood_precision", config.eval.get("precision", "auto"))
        shift.setdefault("likelihood_backend_option", list(config.eval.get("backend_option", [])))
    return shift


def distill_target(config: DistillConfig, run_dir: Path) -> tuple[str, Path]:
    """``(key, folder)`` of the distillation."""
    key = distill_key(config, run_dir)
    return key, layout.stage_dir(run_dir, layout.DISTILL, "distill", key[:KEY_LENGTH])


def distill_key(config: DistillConfig, run_dir: Path) -> str:
    """The distillation's key, and through it every training and evaluation built on it: its settings and
    the training file's contents, so an edited file is distilled (and everything after) again instead of
    being reported from the old one ("distillation data contents" in :mod:`sdft.base.keys`)."""
    path = Path(config.data)
    if not path.is_file():  # a hub dataset: no contents here to key
        return stage_key(config)
    digest, unkeyed = provenance.file_sha256(path), stage_key(config)
    earlier = layout.stage_dir(run_dir, layout.DISTILL, "distill", unkeyed[:KEY_LENGTH]) / layout.RUN_RECORD
    try:
        if json.loads(earlier.read_text())["data"]["sha256"] == digest:
            return unkeyed
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return stage_key(config, {"data_sha256": digest})


@dataclass
class Model:
    """A model the run builds: a training point at one training seed (``train``), or the interpolation of
    that seed's vanilla adapter (``source``, ``alpha``)."""

    label: str
    recipe: str
    params: dict
    key: str
    folder: Path
    settings: dict       # what its stage.json records
    seed: int | None     # the manifest's Arm.seed: set only when the run trains several seeds
    train: TrainConfig | None = None
    source: str | None = None
    alpha: float | None = None
    distilled: Path | None = None  # the arm's own distillation folder (sdft-guard, self-answer); None: the run's


def arm_distillations(config: RunConfig, stages: dict, run_dir: Path) -> dict[str, tuple[DistillConfig, str, Path]]:
    """``{arm: (config, key, folder)}`` of the arms with a distillation of their own: the run's distill section
    plus the arm's options, the seed's own answers under the train section's template when it names one (what
    the arm trains under). The same settings as the run's distillation give its very folder."""
    out = {}
    for point in sweep_points(config):
        if not point.distill or point.arm in out:
            continue
        overrides = dict(point.distill)
        if stages["train"].template and stages["distill"].answer_template is None:
            overrides["answer_template"] = stages["train"].template
        arm_config = replace(stages["distill"], **overrides)
        key, folder = distill_target(arm_config, run_dir)
        out[point.arm] = (arm_config, key, folder)
    return out


def models(config: RunConfig, train: TrainConfig, upstream: str, run_dir: Path,
           own: dict[str, tuple] | None = None) -> Iterator[Model]:
    """Every model after the seed, in the order the run builds them: seed by seed, the run's own seed
    first (``train``: the train section's config; ``upstream``: the distillation's key)."""
    primary = train.seed
    several = config.training_seeds(primary) != [primary]  # else no seed is recorded ("manifest seed", base.keys)
    for seed in config.training_seeds(primary):
        recorded, vanilla = (seed if several else None), None
        for point in sweep_points(config):
            if not config.trains_at("sdft" if point.arm == "mix" else point.arm, seed):  # mix: sdft's sweep
                continue
            label = seeds.label(point.label, seed, primary)
            train_config = replace(train, seed=seed, mix_ratio=point.mix_ratio, limit=point.sample_size,
                                   **arms.train_overrides(point, train.padding_free))
            _, own_key, own_folder = (own or {}).get(point.arm, (None, upstream, None))
            key = stage_key(train_config, own_key)
            folder = layout.stage_dir(run_dir, layout.TRAIN, label, key[:KEY_LENGTH])
            vanilla = folder if point.label == "vanilla" else vanilla
            # The report finds an arm's own distillation through its params.
            params = {**point.params, "distill": str(own_folder)} if own_folder else point.params
            yield Model(label, point.recipe, params, key, folder, keyed_settings(train_config), recorded,
                        train=train_config, distilled=own_folder)
        interpolated = "interp" in config.arms and config.trains_at("interp", seed)
        for interp_label, alpha in arms.interp_labels(config.arm_sections) if interpolated else []:
            label = seeds.label(interp_label, seed, primary)  # from the vanilla of the same seed
            key = stage_key({"alpha": alpha}, vanilla.name)  # vanilla's folder carries its key
            folder = layout.stage_dir(run_dir, layout.INTERP, label, key[:KEY_LENGTH])
            yield Model(label, "interp", {"alpha": alpha, "from": "vanilla"}, key, folder,
                        {"alpha": alpha, "from": str(vanilla)}, recorded, source=str(vanilla), alpha=alpha)
