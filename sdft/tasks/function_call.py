"""Function calling: Gorilla OpenFunctions v1 (the paper's) and BFCL v4 simple_python.

``openfunctions``: records ``instruction`` (question + function spec in prose) and ``output`` (one call
``pkg.func(arg=value, ...)``), Alpaca prompt. Scored by ``answers.calls_match``: calls parsed with
``ast`` anywhere in the answer (prose and code fences tolerated), keyword order free, numbers compared
numerically; the parameter order read from the instruction reconciles positional arguments. Option
``rule=paper`` uses the reference code's regex rule (``answers.paper_call_match``) instead;
``rule=paper_half_credit`` is the looser variant the authors published on their ``reproduce`` branch
(their issue #12): the same rule, plus half credit when the answer's first parentheses hold as many
comma-separated parts as the reference's arguments and each part contains the reference's value (a
positional call, but also e.g. a wrong name with the right values). No PyPI package ships the v1 test
set: ``--data openfunctions=FILE`` (or a hub dataset name).

``bfcl``: the Berkeley Function Calling Leaderboard's simple_python set (400 items) from the
``bfcl-eval`` carrier, or ``--data bfcl=FILE`` of the same shape (ground truth inline as
``ground_truth`` or in a sibling ``possible_answer/<same name>`` file). The prompt is BFCL's default
prompting-model system text with the function schema as JSON, the question as the user turn. Ground
truth lists the acceptable values of each argument (``""`` = may be omitted); the comparison follows
BFCL's AST checker: exactly one distinct call of the function, every required argument present, no
unknown argument, each value among the acceptable ones (strings compared without case, spaces and
``,./-_*^``; an int accepted for a float; lists element-wise; dicts key by key).
"""

from __future__ import annotations

import json
from pathlib import Path

from sdft.base import answers, carriers, templates
from sdft.base.errors import ConfigError, DataError
from sdft.base.records import load_records
from sdft.tasks import GenerativeTask


class OpenFunctions(GenerativeTask):
    name = "openfunctions"
    metric = "accuracy"
    max_new_tokens = 256
    template = templates.PROMPT_TEMPLATES["alpaca"]
    option_spec = {"rule": ("default", "paper", "paper_half_credit")}

    def __init__(self, data_path: str | None = None, **options):
        super().__init__(data_path, **options)
        self.rule = options.get("rule", "default")
        if self.rule not in self.option_spec["rule"]:
            raise ConfigError("openfunctions: option rule must be 'default', 'paper' or 'paper_half_credit', "
                              f"got {self.rule!r}")

    def examples(self) -> list[dict]:
        if not self.data_path:
            raise ConfigError("task openfunctions has no bundled data (no PyPI package ships Gorilla "
                              "OpenFunctions v1): pass --data openfunctions=FILE (records of instruction, "
                              "output = one call), e.g. the paper's openfunction_test.json, or a hub dataset name")
        records, self.source = carriers.user_records(self.data_path)
        return [{"id": str(rec.get("id", f"openfunctions-{i:03d}")),
                 "instruction": carriers.pick(rec, ("instruction", "question", "prompt"), loc),
                 "reference": carriers.pick(rec, ("output", "answer", "response"), loc)}
                for i, (loc, rec) in enumerate(records)]

    def prompt(self, example: dict, tokenizer) -> str:
        return self.render(self.template, example["instruction"], tokenizer)

    def score_with_reason(self, example: dict, completion: str) -> tuple[float, str]:
        if self.rule == "paper":
            ok = answers.paper_call_match(completion, example["reference"])
            return float(ok), "paper_rule_match" if ok else "paper_rule_mismatch"
        if self.rule == "paper_half_credit":
            score = paper_half_credit_score(completion, example["reference"])
            return score, {1.0: "paper_rule_match", 0.5: "positional_half_credit"}.get(score, "paper_rule_mismatch")
        signatures = answers.signatures_from_instruction(example["instruction"])
        ok, reason = answers.calls_match(completion, example["reference"], signatures=signatures or None)
        return float(ok), reason

    def verdict(self, reason: str) -> str:
        return reason  # fixed labels (answers.calls_match, the paper rules)


def paper_half_credit_score(candidate: str, reference: str) -> float:
    """The ``reproduce`` branch's ``check_openfunction``: 1 for the exact rule, else 0.5 for its positional
    fallback, else 0 (flaws kept: the first "(" to the first ")" of the answer, values matched as
    substrings, a value containing a comma never matches)."""
    if answers.paper_call_match(candidate, reference):
        return 1.0
    match = answers._PAPER_CALL.match(answers._paper_standardize(reference))
    if not match:
        return 0.0
    answer = answers._paper_standardize(candidate)
    inside = answer[max(answer.find("(") + 1, 0):answer.find(")")]
    wanted, given = match.group(2).split(","), inside.split(",")
    if len(wanted) != len(given):
        return 0.0
    for ref_param, ans_param in zip(wanted, given):
        _, eq, value = ref_param.partition("=")
        # The reference takes split('=')[1]: the text between the first and second '='.
        if not eq or value.split("=")[0] not in ans_param:
            return 0.0
    return 0.5


# ------------------------------------------------------------------------------------------------ BFCL

_BFCL = ("bfcl_eval", "data/BFCL_v4_simple_python.json")
_BFCL_ANSWERS = ("bfcl_eval", "data/possible_answer/BFCL_v4_simple_python.json")
# BFCL's default system prompt for prompting (not native tool-calling) models, bfcl_eval/constants.
BFCL_SYSTEM = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. "
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the functions can be used, point it out. If the given question lacks the parameters required "
    "by the function, also point it out.\nYou should only return the function calls in your response.\n\n"
    "If you decide to invoke any of the function(s), you MUST put it in the format of "
    "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n"
    "You SHOULD NOT include any other text in the response.\n\n"
    "Here is a list of functions in JSON format that you can invoke.\n{functions}\n")


class BFCL(GenerativeTask):
    name = "bfcl"
    metric = "accuracy"
    max_new_tokens = 256
    template = templates.Template("bfcl", BFCL_SYSTEM, "{instruction}",
                                  "{system}\n\n### Instruction:\n{instruction}\n\n### Response:\n")

    def examples(self) -> list[dict]:
        if self.data_path:
            records, self.source = carriers.user_records(self.data_path)
            answers_path = Path(self.data_path).parent / "possible_answer" / Path(self.data_path).name
        else:
            records = load_records(carriers.carrier_file(*_BFCL))
            answers_path = carriers.carrier_file(*_BFCL_ANSWERS)
            self.source = carriers.describe(*_BFCL)
        truth = {}
        if answers_path.is_file():
            truth = {str(rec.get("id")): rec.get("ground_truth") for _, rec in load_records(answers_path)}
        return [self._example(loc, rec, truth) for loc, rec in records]

    def _example(self, location: str, rec: dict, truth: dict) -> dict:
        ex_id = str(rec.get("id", ""))
        ground = rec.get("ground_truth", truth.get(ex_id))
        functions = rec.get("function")
        if not ex_id or not isinstance(functions, list) or len(functions) != 1:
            raise DataError(location, "a BFCL simple record needs an id and a one-function 'function' list")
        if not (isinstance(ground, list) and len(ground) == 1 and isinstance(ground[0], dict)):
            raise DataError(location, "no ground truth: expected 'ground_truth' [{name: {arg: [values]}}] "
                                      "inline or in a sibling possible_answer/ file", field="ground_truth")
        question = rec.get("question")
        try:  # [[{role, content}, ...]]: the first turn's user message
            user = next(m["content"] for m in question[0] if m.get("role") == "user")
        except (TypeError, KeyError, IndexError, StopIteration, AttributeError):
            raise DataError(location, "expected [[{role: user, content: ...}]]", field="question") from None
        return {"id": ex_id, "question": user, "function": functions[0], "ground_truth": ground[0]}

    def prompt(self, example: dict, tokenizer) -> str:
        system = BFCL_SYSTEM.replace("{functions}", json.dumps([example["function"]], indent=2))
        return self.render(self.template, example["question"], tokenizer, system=system)

    def score_with_reason(self, example: dict, completion: str) -> tuple[float, str]:
        ok, reason = bfcl_match(completion, example["function"], example["ground_truth"])
        return float(ok), reason

    def verdict(self, reason: str) -> str:
        return reason.partition(":")[0]  # after the colon: an argument name, which may be the model's


def bfcl_match(text: str, function: dict, ground_truth: dict) -> tuple[bool, str]:
    """BFCL simple-category check of a free-text answer against ``{name: {arg: [acceptable values]}}``."""
    (name, acceptable), = ground_truth.items()
    calls = [c for c in answers.parse_calls(text) if c.name == name]
    if not calls:
        return False, "no_call" if not answers.parse_calls(text) else "wrong_function"
    # A call repeated verbatim (a code block, then prose) is one call; two different ones are not.
    distinct = {repr((c.args, sorted(c.kwargs.items(), key=lambda kv: kv[0]))) for c in calls}
    if len(distinct) > 1:
        return False, "several_different_calls"
    properties = function.get("parameters", {}).get("properties", {})
    required = function.get("parameters", {}).get("required", [])
    call = calls[0]
    if len(call.args) > len(properties):
        return False, "too_many_arguments"
    given = dict(zip(properties, call.args))
    for key, value in call.kwargs.items():
        if key in given:
            return False, f"argument_given_twice:{key}"
        given[key] = value
    for param in required:
        if param not in given:
            return False, f"missing_required:{param}"
    for param, value in given.items():
        if param not in properties or param not in acceptable:
            return False, f"unexpected_argument:{param}"
        if not _value_ok(value, acceptable[param], properties[param].get("type")):
            return False, f"wrong_value:{param}"
    for param, values in acceptable.items():
        if param not in given and "" not in values:
            return False, f"missing_argument:{param}"
    return True, "match"


def _standardize(text: str) -> str:
    # BFCL's standardize_string: "April 1, 2024" == "april 1 2024"; quotes made uniform.
    return "".join(ch for ch in text if ch not in " ,./-_*^").lower().replace("'", '"')


def _norm(value, declared: str | None = None):
    """A value in the form BFCL compares: strings standardized, tuples as lists, int -> float for floats."""
    if isinstance(value, answers.Expr):
        return ("expr", _standardize(value.source))  # a variable name: equal only to the same text
    if isinstance(value, str):
        return _standardize(value)
    if declared == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


_TYPES = {"string": str, "integer": int, "float": (int, float), "boolean": bool,
          "array": (list, tuple), "tuple": (list, tuple), "dict": dict}


def _same(a, b) -> bool:
    # Numbers compare by value (1 == 1.0 inside lists, as in BFCL), but a bool is never a number.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _value_ok(value, acceptable: list, declared: str | None) -> bool:
    norm = _norm(value, declared)
    if isinstance(norm, tuple):  # non-literal expression: BFCL accepts a variable spelled as the string
        return any(isinstance(a, str) and a and _standardize(a) == norm[1] for a in acceptable)
    expected = _TYPES.get(declared or "")
    # The declared type first (BFCL's type check): 5.0 for an integer, "5" for a number, True for 1 fail.
    if expected is not None and (not isinstance(value, expected) or
                                 (isinstance(value, bool) and declared != "boolean")):
        return False
    if isinstance(value, dict):
        return any(_dict_ok(value, a) for a in acceptable if isinstance(a, dict))
    return any(a != "" and _same(norm, _norm(a, declared)) for a in acceptable)


def _dict_ok(value: dict, acceptable: dict) -> bool:
    """A dict argument: known keys only, each value among its acceptable ones, omitted keys optional."""
    for key, item in value.items():
        if key not in acceptable or not any(_same(_norm(item), _norm(a)) for a in acceptable[key] if a != ""):
            return False
    return all(key in value or "" in options for key, options in acceptable.items())
