"""`sdft distill`'s settings: the seed model, the data, the distillation template and filter, decoding, and the paper's preset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sdft.base import templates
from sdft.base.config import DEFAULT_MODEL, IF_SET, TaskKind, Validated, column_mapping, field
from sdft.base.errors import ConfigError
from sdft.generation import EngineSettings, GenerationParams

# The reference code never sets decoding values; these are the defaults it inherited (paper-method §4).
PRESETS = {
    "paper": {"temperature": 0.95, "top_p": 0.7, "top_k": 50, "max_new_tokens": 512,
              "max_prompt_tokens": 1024, "truncation_side": "right", "seed": 42, "filter_mode": "paper",
              "input_separator": "\n", "template_mode": "plain",  # the reference rendered prompts as text
              "system_prompt": "template"},
}
# The format guard's default bounds on a rewrite's length over the seed's own answer's: half to twice.
GUARD_LENGTH_RATIOS = (0.5, 2.0)


@dataclass
class DistillConfig(EngineSettings, Validated):
    data: str = field(None, "dataset file (JSON, JSONL, CSV, Parquet) or hub dataset name")
    out: str = field("runs/distill", "output folder (rerun the same command to resume)", keyed=False)
    model: str = field(DEFAULT_MODEL, "seed model: alias, hub id, local folder or .gguf file")
    adapter: str | None = field(None, "optional LoRA adapter folder on top of the model")
    task: TaskKind = field("general", "task kind: picks the template and the filter")
    template: str | None = field(None, "distillation template preset (using, refer, math) or YAML/JSON file")
    template_mode: templates.Mode = field("auto", "render through the chat template (chat) or as plain text")
    system_prompt: str = field(templates.DEFAULT_SYSTEM_PROMPT, templates.SYSTEM_PROMPT_HELP)
    filter: str | None = field(None, "filter kind, or a user filter 'module:function' (default: the task's)")
    filter_mode: Literal["default", "paper"] = field("default", "'paper' reproduces the reference code's rules")
    shape: str = field("auto", "data shape: auto, alpaca, gsm8k, sharegpt, messages, prompt_completion")
    rewrite_turns: Literal["all_turns", "last_turn"] = field(
        "all_turns", "conversations with several assistant turns: rewrite each one with the conversation before "
                     "it in context (all_turns) or the last one only (last_turn); single-turn data is the same "
                     "either way", keyed=IF_SET)
    columns: list[str] = field(default_factory=list, help="column mapping, e.g. instruction=prompt,response=answer")
    limit: int | None = field(None, "distil only the first N examples (with sample_seed: a seeded random N)")
    sample_seed: int | None = field(None, "with limit: a seeded random subset of N, kept in file order, instead "
                                          "of the first N (a file sorted by source would bias the first N)",
                                    keyed=IF_SET)
    batch_size: int = field(8, "prompts per generation batch")
    max_new_tokens: int = field(512, "generation budget per rewrite")
    max_prompt_tokens: int = field(1024, "longer prompts are cut (and reported)")
    truncation_side: Literal["left", "right"] = field(
        "left", "which end of a too-long prompt is cut (right: the reference code's, loses '### Response:')")
    input_separator: str = field("\n\n", "joins an alpaca instruction and its input (reference code: one newline)")
    temperature: float = field(0.0, "0 = greedy decoding (our default); the paper sampled at 0.95")
    top_p: float = field(1.0, "nucleus sampling threshold (sampling only)")
    top_k: int = field(0, "top-k sampling (0 = off; sampling only)")
    seed: int = field(42, "random seed for sampling")
    progress: bool = field(True, "show a progress bar", keyed=False)
    # Format-aware distillation, beyond the paper (docs/arms.md): both need the seed's own answer to each
    # prompt under the task's prompt, one more generation pass. Keyed only when set: earlier keys stay.
    format_guard: bool = field(False, "accept a rewrite only when it opens like the seed's own answer to the "
                                      "task's prompt (prose, numbered list, bullets, code block, heading) and "
                                      "its length is within the guard's ratios of that answer's", keyed=IF_SET)
    guard_min_length_ratio: float = field(GUARD_LENGTH_RATIOS[0], "format guard: shortest rewrite accepted, as a "
                                          "share of the seed's own answer's length in characters", keyed=IF_SET)
    guard_max_length_ratio: float = field(GUARD_LENGTH_RATIOS[1], "format guard: longest rewrite accepted, likewise",
                                          keyed=IF_SET)
    self_answer: bool = field(False, "targets: the seed's own answer to the task's prompt where it passes the "
                                     "filter, else the accepted rewrite, else the original", keyed=IF_SET)
    answer_template: str | None = field(None, "prompt template of the seed's own answers (preset or file; "
                                              "default: the task's, the one sdft train uses)", keyed=IF_SET)

    @property
    def needs_self_answers(self) -> bool:
        """Whether this distillation asks the seed for its own answers (the guard or self-answer mode)."""
        return self.format_guard or self.self_answer

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("distill needs --data (a dataset file or hub name)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("'limit' must be at least 1")
        if self.sample_seed is not None and self.limit is None:
            raise ConfigError("'sample_seed' picks a random subset of 'limit' examples: set 'limit' too")
        generation_params(self)  # decoding values are checked where they are defined
        column_mapping(self.columns)
        templates.check_system_prompt(self.system_prompt)
        self.check_engine_settings()  # a backend option no backend takes: refused before any model loads
        self._check_self_answers()

    def _check_self_answers(self) -> None:
        low, high = self.guard_min_length_ratio, self.guard_max_length_ratio
        if not 0 < low <= 1 <= high:
            raise ConfigError(f"the format guard's length ratios must satisfy 0 < guard_min_length_ratio <= 1 <= "
                              f"guard_max_length_ratio, got {low:g} and {high:g}")
        if (low, high) != GUARD_LENGTH_RATIOS and not self.format_guard:
            raise ConfigError("'guard_min_length_ratio' / 'guard_max_length_ratio' bound the format guard: set "
                              "'format_guard' too")
        if self.answer_template is not None and not self.needs_self_answers:
            raise ConfigError("'answer_template' renders the seed's own answers: set 'format_guard' or "
                              "'self_answer' too")


def generation_params(config) -> GenerationParams:
    return GenerationParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            top_p=config.top_p, top_k=config.top_k, seed=config.seed,
                            batch_size=config.batch_size, max_prompt_tokens=config.max_prompt_tokens,
                            truncation_side=config.truncation_side)
