"""``alpaca_eval``: answer the AlpacaEval instructions and export them for the ``alpaca_eval`` CLI.

The reference code does exactly this (``eval/prepare_alpaca_eval.py``): it generates answers to the 805
AlpacaEval instructions with the Alpaca prompt and writes them as ``[{"instruction", "output"}, ...]``,
leaving the judging (GPT-4, paid) to ``alpaca_eval --model_outputs FILE``. We write the same file, with
the ``generator`` name the CLI uses for its leaderboard (option ``generator``, default the file's
parent folder name), to ``<eval out>/alpaca_eval_outputs.json`` in input order, after every run.

No judge runs here, so the only score is ``answered``: the share of non-empty answers (an empty answer
is what a broken template or a too-long prompt produces, and worth seeing before paying a judge). For
a local pairwise judge see the ``winrate`` task. Data: ``--data alpaca_eval=FILE`` (records of
``instruction`` [+ ``input``], e.g. the paper's alpaca_eval.json; AlpacaEval's ``dataset`` field is
carried over when present).
"""

from __future__ import annotations

from pathlib import Path

from sdft.base import templates
from sdft.base.errors import ConfigError
from sdft.base.store import write_json
from sdft.tasks import GenerativeTask, TaskContext
from sdft.tasks.instructions import read_instructions

OUTPUT_FILE = "alpaca_eval_outputs.json"


class AlpacaEval(GenerativeTask):
    name = "alpaca_eval"
    metric = "answered"
    max_new_tokens = 512
    option_spec = {"generator": None}  # the name in the exported outputs (default: the eval folder's)
    template = templates.PROMPT_TEMPLATES["alpaca"]

    def examples(self) -> list[dict]:
        if not self.data_path:
            raise ConfigError("task alpaca_eval needs the AlpacaEval instructions: --data alpaca_eval=FILE "
                              "(records of instruction [+ input]), e.g. the paper's alpaca_eval.json")
        instructions, self.source = read_instructions(self.name, self.data_path)
        examples = [{"id": item.id, "instruction": item.text, "question": item.with_input(strip=True),
                     "dataset": item.record.get("dataset")} for item in instructions]
        self._by_id = {ex["id"]: ex for ex in examples}
        return examples

    def prompt(self, example: dict, tokenizer) -> str:
        return templates.render(self.template, example["question"], tokenizer=tokenizer,
                                mode=self.options.get("template_mode", "auto"))

    def score_with_reason(self, example: dict, completion: str) -> tuple[float, str]:
        return (1.0, "answered") if completion.strip() else (0.0, "empty")

    def verdict(self, reason: str) -> str:
        return reason

    def aggregate(self, scores: list[float], records: list[dict], context: TaskContext | None = None) -> dict:
        entry = super().aggregate(scores, records)
        if context is not None and context.out_dir is not None:
            out = Path(context.out_dir) / OUTPUT_FILE
            generator = self.options.get("generator") or out.parent.name
            write_json(out, alpaca_eval_outputs(records, self._by_id, generator))
            entry["exported"] = str(out)
            entry["next_step"] = f"alpaca_eval --model_outputs {out}  (needs an OpenAI API key)"
        return entry


def alpaca_eval_outputs(records: list[dict], examples: dict[str, dict], generator: str) -> list[dict]:
    """The ``alpaca_eval`` CLI's model-outputs format: one object per instruction, in input order."""
    rows = []
    for rec in records:
        ex = examples[rec["id"]]
        row = {"instruction": ex["instruction"], "output": rec["completion"], "generator": generator}
        if ex.get("dataset"):
            row["dataset"] = ex["dataset"]
        rows.append(row)
    return rows

