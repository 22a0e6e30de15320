"""AlpacaEval-style win rate: a judge compares the model's answer with a reference answer, pairwise.

Data: an instruction set of ``instruction`` (+ optional ``input``) and reference ``output``, e.g. the
paper's AlpacaEval file (805 instructions, text-davinci-003 references) via
``--data winrate=alpaca_eval.json``. No PyPI package ships such a set with references, so ``--data`` is
required.

Judge (``--judge``): any model our backends load (alias, hub id, folder, .gguf; loaded with
``--judge-backend``, default ``--backend``), or an OpenAI-compatible endpoint ``http(s)://host/v1``
with ``--judge-model NAME`` (API key, if needed, from ``SDFT_JUDGE_API_KEY`` or ``OPENAI_API_KEY``).
Each item is judged twice, once with the model's answer shown first and once with the reference first,
which cancels the judge's position bias: an item scores 1 (won both), 0.5 (split or unparseable), or 0
(lost both), and the win rate is the mean, with a normal-approximation 95% interval. Verdicts are cached
next to the generations, so a rerun asks the judge nothing new.

How weak a small local judge is: a 135M-1B chat model mostly does not judge at all. It tends to pick
the same position whatever the content (position bias), to echo one of the answers, or to answer
something other than "Output (a)"/"Output (b)". With both orders such behaviour shows up as a win rate
near 50% and a low ``position_consistency`` (share of items where both orders agree) -- read that
number before the win rate. Published AlpacaEval numbers use GPT-4-class judges, whose agreement with
humans is about 65-70%; a small local judge is only a smoke test, and its numbers are not comparable
with the paper's. Use a strong judge through an endpoint for anything you would report.
"""

from __future__ import annotations

import hashlib
import re

from sdft import generation
from sdft.base import carriers, templates
from sdft.base.endpoint import api_key, check_url, post_json, redact, with_path
from sdft.base.errors import ConfigError, SdftError
from sdft.base.stats import Metric
from sdft.base.store import ProgressFile
from sdft.tasks import JudgedTask, TaskContext
from sdft.tasks.instructions import read_instructions

JUDGE_SYSTEM = "You are a fair judge of the quality of answers written by AI assistants."
JUDGE_PROMPT = (
    "Which of the two responses below follows the instruction better: more helpful, correct, relevant "
    "and complete? Judge the content, not the order in which the responses are shown, and do not prefer "
    "a response just because it is longer.\n\n"
    "### Instruction:\n{instruction}\n\n### Response (a):\n{a}\n\n### Response (b):\n{b}\n\n"
    'Answer with exactly "Output (a)" or "Output (b)".')
JUDGE_MAX_TOKENS = 24
# Most explicit first: "Output (b)" beats a bare "(a)" that may only echo the prompt's headings.
_VERDICTS = (re.compile(r"output\s*[:\-]?\s*\(?\s*([ab])\s*\)", re.IGNORECASE),
             re.compile(r"^\W*\(?([ab])\)?\W*$", re.IGNORECASE | re.MULTILINE),
             re.compile(r"(?<!response )\(([ab])\)", re.IGNORECASE))


def judge_prompt(instruction: str, a: str, b: str) -> str:
    # One pass: an answer that itself contains "{b}" (code often does) must not be substituted again.
    values = {"instruction": instruction, "a": a.strip(), "b": b.strip()}
    return re.sub(r"\{(instruction|a|b)\}", lambda m: values[m.group(1)], JUDGE_PROMPT)


def parse_verdict(text: str) -> str | None:
    """'a', 'b' or None: the judge's choice, by the most explicit pattern found."""
    for pattern in _VERDICTS:
        match = pattern.search(text or "")
        if match:
            return match.group(1).lower()
    return None


class WinRate(JudgedTask):
    name = "winrate"
    metric = "win_rate"
    max_new_tokens = 512
    template = templates.PROMPT_TEMPLATES["alpaca"]

    def examples(self) -> list[dict]:
        if not self.data_path:
            raise ConfigError("task winrate needs an instruction set with reference answers: "
                              "--data winrate=FILE (records of instruction [+ input] and output), e.g. "
                              "the paper's alpaca_eval.json")
        instructions, self.source = read_instructions(self.name, self.data_path)
        return [{"id": item.id, "instruction": item.with_input(),
                 "reference": carriers.pick(item.record, ("output", "response", "reference"), item.location)}
                for item in instructions]

    def prompt(self, example: dict, tokenizer) -> str:
        return self.render(self.template, example["instruction"], tokenizer)

    def score_batch(self, examples: list[dict], completions: list[str],
                    context: TaskContext | None = None) -> list[tuple[float, dict]]:
        judge = context.judge if context else None
        if judge is None:
            raise ConfigError("task winrate needs --judge")
        asks = {}  # cache key -> (example id, order, judge prompt)
        for ex, answer in zip(examples, completions):
            for order in ("model_first", "reference_first"):
                a, b = (answer, ex["reference"]) if order == "model_first" else (ex["reference"], answer)
                prompt = judge_prompt(ex["instruction"], a, b)
                key = hashlib.sha256(f"{judge.key}\0{prompt}".encode()).hexdigest()[:24]
                asks[key] = (ex["id"], order, prompt)
        cache = ProgressFile(context.cache_dir / f"winrate-judge-{context.settings_key}.jsonl", key="key") \
            if context.cache_dir is not None else None
        pending = [k for k in asks if cache is None or not cache.done(k)]
        verdicts = {k: cache.records[k]["verdict"] for k in asks if cache is not None and cache.done(k)}
        for start in range(0, len(pending), judge.batch_size):
            keys = pending[start:start + judge.batch_size]
            texts = judge.ask([asks[k][2] for k in keys])
            rows = [{"key": k, "id": asks[k][0], "order": asks[k][1], "judge_text": t,
                     "verdict": parse_verdict(t)} for k, t in zip(keys, texts)]
            if cache is not None:
                cache.append(rows)
            verdicts.update({r["key"]: r["verdict"] for r in rows})
        by_item = {}
        for key, (ex_id, order, _) in asks.items():
            by_item.setdefault(ex_id, {})[order] = verdicts[key]
        return [self._item_score(by_item[ex["id"]]) for ex in examples]

    @staticmethod
    def _item_score(v: dict) -> tuple[float, dict]:
        # Model shown first wins with 'a'; shown second wins with 'b'. Unparseable counts as a tie.
        points = [{"a": 1.0, "b": 0.0}.get(v["model_first"], 0.5),
                  {"b": 1.0, "a": 0.0}.get(v["reference_first"], 0.5)]
        return sum(points) / 2, {"verdict_model_first": v["model_first"],
                                 "verdict_reference_first": v["reference_first"]}

    def verdict(self, reason: dict) -> str:
        """The judge's picks, shown first / shown second ("-": unparsed): "a/b" means both orders chose the
        model."""
        return "/".join(reason.get(k) or "-" for k in ("verdict_model_first", "verdict_reference_first"))

    def aggregate(self, scores: list[float], records: list[dict], context: TaskContext | None = None) -> dict:
        consistent = [float(s in (0.0, 1.0)) for s in scores]  # both orders agreed on the winner
        unparsed = sum(v is None for r in records for v in (r.get("reason") or {}).values())
        judge = context.judge if context else None
        return self.entry({self.metric: Metric.of_scores(scores), "position_consistency": Metric.of_scores(consistent)},
                          wins=sum(s == 1.0 for s in scores), losses=sum(s == 0.0 for s in scores),
                          ties=sum(0.0 < s < 1.0 for s in scores), unparsed_verdicts=unparsed,
                          judge=judge.description if judge else None)


def make_judge(spec: str, *, model_name: str | None = None, backend: str = "hf", batch_size: int = 8,
               template_mode: str = "auto", precision: str = "auto"):
    """A judge from ``--judge``: an endpoint URL or a model loaded by one of our backends."""
    if spec.startswith(("http://", "https://")):
        if not model_name:
            raise ConfigError("a judge endpoint needs --judge-model NAME (the model to request)")
        return EndpointJudge(spec, model_name, batch_size)
    return LocalJudge(spec, backend, batch_size, template_mode, precision)


class LocalJudge:
    """A judge model run by a generation backend (loaded on first use), greedy, short answers."""

    def __init__(self, model: str, backend: str, batch_size: int, template_mode: str, precision: str = "auto"):
        self.model, self.backend_name, self.batch_size, self.mode = model, backend, batch_size, template_mode
        self.precision = precision
        self.setup = None  # the resolved engine (sdft.generation.BackendSetup), once loaded
        self.key = f"local\0{backend}\0{model}\0{template_mode}\0{JUDGE_MAX_TOKENS}"
        self.description = f"{model} ({backend} backend)"
        self._backend = None

    def ask(self, prompts: list[str]) -> list[str]:
        if self._backend is None:
            self.setup = generation.backend_setup(generation.Engine(self.model, self.backend_name, self.precision))
            self._backend = self.setup.load(None)
        tokenizer = self._backend.tokenizer
        chat = tokenizer is not None and templates.resolve_mode(self.mode, tokenizer) == "chat"
        # The chat template directly, not templates.render: answers are arbitrary text, and render's
        # placeholder filling would touch a literal "{reference}" inside them.
        rendered = [tokenizer.apply_chat_template([{"role": "system", "content": JUDGE_SYSTEM},
                                                   {"role": "user", "content": p}],
                                                  tokenize=False, add_generation_prompt=True)
                    if chat else f"{JUDGE_SYSTEM}\n\n{p}\n\n" for p in prompts]
        params = generation.GenerationParams(max_new_tokens=JUDGE_MAX_TOKENS, temperature=0.0,
                                             batch_size=self.batch_size, max_prompt_tokens=4096)
        return [c.text for c in self._backend.generate(rendered, params)]


class EndpointJudge:
    """An OpenAI-compatible ``/chat/completions`` endpoint (see :mod:`sdft.base.endpoint` for the key's safety)."""

    def __init__(self, url: str, model: str, batch_size: int, timeout: float = 120.0, retries: int = 4):
        self.url = with_path(url, "/chat/completions")  # before a query string, not after it
        self.api_key = api_key()
        check_url(self.url, has_key=bool(self.api_key))  # before any model loads or any file is written
        self.model, self.batch_size, self.timeout, self.retries = model, batch_size, timeout, retries
        self.key = f"endpoint\0{redact(self.url)}\0{model}\0{JUDGE_MAX_TOKENS}"
        self.description = f"{model} at {redact(self.url)}"

    def ask(self, prompts: list[str]) -> list[str]:
        return [self._one(p) for p in prompts]

    def _one(self, prompt: str) -> str:
        reply = post_json(self.url, {"model": self.model, "temperature": 0, "max_tokens": JUDGE_MAX_TOKENS,
                                     "messages": [{"role": "system", "content": JUDGE_SYSTEM},
                                                  {"role": "user", "content": prompt}]},
                          api_key=self.api_key, timeout=self.timeout, retries=self.retries)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise SdftError(f"judge endpoint {redact(self.url)} gave no chat completion") from None
