"""`sdft run`'s settings: one YAML file with a section per stage, the arms, mix ratios, sample sizes and training
seeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdft.base import seeds
from sdft.base.config import DEFAULT_MODEL, TaskKind, Validated, column_mapping, field, override
from sdft.base.errors import ConfigError
from sdft.base.templates import SystemPromptSettings
from sdft.experiment import arms
from sdft.experiment.arms import ARMS, DEFAULT_ARMS
from sdft.train.config import TrainConfig

# Keys the pipeline sets itself; a config section may not override them.
_OWNED = {"distill": {"model", "data", "out", "task", "shape", "columns"},
          "train": {"model", "data", "out", "mix_ratio", "limit", "task", "resume", "shape", "columns"},
          "eval": {"model", "adapter", "out"},
          "shift": {"what", "reference", "candidate", "out", "tasks", "model", "adapter"}}


@dataclass
class RunConfig(Validated):
    """One experiment. Sections ``distill``, ``train`` and ``eval`` take the keys of those stages' configs."""

    name: str = field(None, "experiment name; output goes to <out_root>/<name>/")
    data: str = field(None, "training dataset (file or hub name)")
    task: TaskKind = field("general", "task kind of the training data (picks templates and filter)")
    model: str = field(DEFAULT_MODEL, "seed model")
    # The stages' shared setting (not mixed in: a run has no flags, and its keys keep their order in config.json).
    system_prompt: str = override(SystemPromptSettings, "system_prompt", help="system text for every stage unless a "
                                  "section sets its own: model (the chat template's default), none, template, or "
                                  "your own text")
    shape: str = field("auto", "data shape")
    columns: list[str] = field(default_factory=list, help="column mapping, field=column")
    out_root: str = field("runs", "parent folder of the run")
    distill: dict = field(default_factory=dict, help="distillation settings (sdft distill keys)")
    train: dict = field(default_factory=dict, help="training settings (sdft train keys)")
    eval: dict = field(default_factory=dict, help="evaluation settings (sdft eval keys)")
    shift_tasks: list[str] = field(
        default_factory=list, help="eval tasks whose answers are compared with the seed's (default: all generative)")
    shift: dict = field(default_factory=dict, help="answer-shift settings (sdft analyze keys: likelihood_backend, "
                                                   "likelihood_precision, batch_size, embedding_model, ...); "
                                                   "likelihood_backend: vllm scores the seed answers' NLL in the "
                                                   "engine that evaluated the model, at the eval section's precision")
    mix_ratios: list[float] = field(default_factory=lambda: [0.0, 1.0], help="share of rewrites used in training")
    sample_sizes: list[int] = field(default_factory=list, help="training-set sizes to sweep (at mix 0 and 1)")
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS),
                            help=f"arms to train and compare: {', '.join(ARMS)} (docs/arms.md)")
    replay: dict = field(default_factory=dict, help="replay arms: data, ratio, source (data|seed), max_new_tokens, "
                                                    "backend, precision (sdft train --replay-* keys without the "
                                                    "prefix)")
    onpolicy: dict = field(default_factory=dict, help="onpolicy arms: sdft train --onpolicy-* keys without the prefix")
    interp: dict = field(default_factory=dict, help="interp arm: alphas (0 = seed, 1 = vanilla)")
    guard: dict = field(default_factory=dict, help="sdft-guard arm: min_length_ratio, max_length_ratio (sdft "
                                                   "distill --guard-* keys without the prefix)")
    train_seeds: list[int] | None = field(
        None, "training seeds: every trained arm is trained and evaluated once per seed (sdft train --seed: "
        "subset, mix choice, batch order, adapter init); the report shows the mean and spread over seeds. "
        "Default: train.seed alone (42). The model of train.seed keeps the arm's label, others get -s<seed>")
    arm_seeds: dict = field(
        default_factory=dict, help="training seeds of an arm trained at fewer seeds than the others (a costly "
        "arm: {onpolicy: [42]}); each a subset of the run's training seeds; vanilla, every arm's reference, "
        "trains at all of them")

    def validate(self) -> None:
        if not self.name or not self.data:
            raise ConfigError("a run config needs 'name' and 'data'")
        column_mapping(self.columns)
        if any(not 0 <= r <= 1 for r in self.mix_ratios):
            raise ConfigError("'mix_ratios' must lie in [0, 1]")
        for section, owned in _OWNED.items():
            clash = owned & set(getattr(self, section))
            if clash:
                raise ConfigError(f"section '{section}' may not set {', '.join(sorted(clash))}: "
                                  "the pipeline sets them (use the top-level keys)")
        per_arm = sorted(k for k in self.train if k == "objective" or k.startswith(("replay_", "onpolicy_")))
        if per_arm:
            raise ConfigError(f"section 'train' may not set {', '.join(per_arm)}: they belong to arms "
                              "(use 'arms' and the replay / onpolicy sections)")
        arms.check(self.arms, self.arm_sections, self.train, self.distill)
        seeds.check(self.train_seeds)
        seeds.check_arm_seeds(self.arm_seeds, self.arms, self.training_seeds(self.train.get("seed", TrainConfig.seed)))

    @property
    def arm_sections(self) -> dict:
        return {"replay": self.replay, "onpolicy": self.onpolicy, "interp": self.interp, "guard": self.guard}

    @property
    def run_dir(self) -> Path:
        return Path(self.out_root) / self.name

    def training_seeds(self, primary: int) -> list[int]:
        """The training seeds, given the train section's own ``seed`` (``primary``)."""
        return list(self.train_seeds) if self.train_seeds is not None else [primary]

    def trains_at(self, arm: str, seed: int) -> bool:
        """Whether ``arm`` is trained (or interpolated) at training seed ``seed``."""
        return arm not in self.arm_seeds or seed in self.arm_seeds[arm]


@dataclass
class RunCommand:
    arguments: list[str] = field(
        default_factory=list, positional=True, metavar="CONFIG.yaml KEY=VALUE",
        help="the experiment YAML file (unless --config names it), then settings that override it: "
             "section.key=value or key=value, values as in YAML (train.learning_rate=1e-4 eval.limit=20 "
             "arms=[vanilla,sdft])")
    config: str | None = field(None, "the experiment YAML file (the same as naming it first)")
    name: str | None = field(None, "override the config's name")
    out_root: str | None = field(None, "override the config's out_root")
    dry_run: bool = field(False, "print the plan: each stage, whether it is done (cached) or to run, and an "
                                 "estimate of its time from the stages already on disk; load no model, run nothing")
    mixed_cpu: bool = field(False, "resume a run whose stages ran on a CPU of the other kind (bf16 units or not): "
                                   "its answers then mix two kinds' roundings (recorded in mixed-cpu.json)")

    def file_and_overrides(self) -> tuple[str, list[str]]:
        """The config file and the overrides after it."""
        items = list(self.arguments)
        if self.config:
            return self.config, items
        if not items or ("=" in items[0] and not Path(items[0]).is_file()):
            raise ConfigError("usage: sdft run CONFIG.yaml [section.key=value ...] (or --config CONFIG.yaml)")
        return items[0], items[1:]
