"""Settings of the comparison stage: `sdft analyze` (answers against the seed's, or two evaluations item by item)
and `sdft shift` (weights against the seed's)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from sdft.base import layout
from sdft.base.config import DEFAULT_MODEL, Validated, field
from sdft.base.errors import ConfigError

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


@dataclass
class AnalyzeConfig(Validated):
    reference: str = field(help="eval folder of the reference: the seed model's (shift), or any evaluation of "
                                "the same items (paired: e.g. the plain one against a decoding probe)")
    candidate: str = field(help="eval folder compared with it (e.g. the model after fine-tuning)")
    what: Literal["shift", "paired"] = field(
        "shift", "analysis to run: shift (distribution shift: answer similarity, seed likelihood) or paired (item "
                 "by item from the per-item files: items better / worse, paired interval, McNemar p, identical "
                 "answers, openings; reads no answer text and loads no model)", positional=True)
    out: str | None = field(None, "output folder (default: CANDIDATE/shift_vs_<reference folder name>, "
                                  "paired: CANDIDATE/paired_vs_<reference folder name>)")
    tasks: list[str] | None = field(None, "tasks to compare (default: shift, every generative task both "
                                          "folders have; paired, every task both have per-item scores of)")
    model: str | None = field(None, "shift: candidate model for seed likelihood (default: from its results.json)")
    adapter: str | None = field(None, "shift: candidate's LoRA adapter (default: from its results.json when "
                                      "--model is not given)")
    embedding_model: str = field(DEFAULT_EMBEDDING_MODEL, "shift: sentence-embedding model for cosine "
                                                          "similarity ('none' to skip)")
    likelihood: bool = field(True, "shift: compute seed likelihood (loads the candidate model)")
    baseline: bool = field(True, "shift: also score the seed answers under the reference model, for the change")
    batch_size: int = field(8, "shift: sequences per forward pass")
    likelihood_backend: Literal["hf", "vllm"] = field(
        "hf", "shift: scorer of the seed answers' NLL: hf (a torch pass, fp32 on a CPU) or vllm (the engine's "
              "prompt log-probabilities at --likelihood-precision; an engine an evaluation of the same model left "
              "running in this process is reused)")
    likelihood_precision: Literal["auto", "fp32", "bf16"] = field("auto", "shift: precision of the vllm scorer "
                                                                          "(as sdft eval --precision)")
    likelihood_backend_option: list[str] = field(default_factory=list, help="shift: KEY=VALUE option of the "
                                                 "vllm scorer (as sdft eval --backend-option)")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("'batch_size' must be at least 1")
        if self.what == "paired":
            shift_only = [f.name for f in dataclasses.fields(self)
                          if f.metadata.get("help", "").startswith("shift: ") and getattr(self, f.name) != (
                              f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)]
            if shift_only:
                flags = ", ".join("--" + name.replace("_", "-") for name in shift_only)
                raise ConfigError(f"{flags}: settings of `sdft analyze shift`; `paired` reads "
                                  "the per-item files only and loads no model")


@dataclass
class ShiftConfig(Validated):
    model: str = field(DEFAULT_MODEL, "base model (alias, hub id, folder); needed with --tuned")
    adapter: str | None = field(None, "LoRA adapter folder (an 'sdft train' output)")
    tuned: str | None = field(None, "folder of fully fine-tuned (or merged) weights, compared with --model")
    out: str | None = field(None, f"folder for {layout.WEIGHT_SHIFT} (default: the adapter or tuned folder)")

    def validate(self) -> None:
        if bool(self.adapter) == bool(self.tuned):
            raise ConfigError("shift needs exactly one of --adapter DIR (LoRA) or --tuned DIR (full weights)")
