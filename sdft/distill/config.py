"""`sdft distill`'s settings: the seed model, the data, the distillation template and filter, decoding, and the paper's preset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sdft.base import templates
from sdft.base.config import DEFAULT_MODEL, IF_SET, TaskKind, Validated, column_mapping, field, override
from sdft.base.errors import ConfigError
from sdft.base.templates import SystemPromptSettings
from sdft.generation import DecodingSettings, EngineSettings

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
class DistillConfig(EngineSettings, DecodingSettings, SystemPromptSettings, Validated):
    data: str = field(None, "dataset file (JSON, JSONL, CSV, Parquet) or hub dataset name")
    out: str = field("runs/distill", "output folder (rerun the same command to resume)", keyed=False)
    model: str = field(DEFAULT_MODEL, "seed model: alias, hub id, local folder or .gguf file")
    adapter: str | None = field(None, "optional LoRA adapter folder on top of the model")
    task: TaskKind = field("general", "task kind: picks the template and the filter")
    template: str | None = field(None, "distillation template preset (using, refer, math) or YAML/JSON file")
    template_mode: templates.Mode = field("auto", "render through the chat template (chat) or as plain text")
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
    input_separator: str = field("\n\n", "joins an alpaca instruction and its input (reference code: one newline)")
    # Decoding (DecodingSettings) with distillation's own budget and help.
    max_new_tokens: int = override(DecodingSettings, "max_new_tokens", 512, "generation budget per rewrite")
    temperature: float = override(DecodingSettings, "temperature",
                                  help="0 = greedy decoding (our default); the paper sampled at 0.95")
    progress: bool = field(True, "show a progress bar", keyed=False)
    stream_answers: bool = field(True, "hand every prompt to the engine at once (vLLM keeps them all in flight; "
                                 "each answer is saved as it finishes); off: one chunk at a time", keyed=False)
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
        self.check_decoding_settings()
        column_mapping(self.columns)
        self.check_system_prompt_settings()
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
