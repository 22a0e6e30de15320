"""Multi-turn and tool-calling records: OpenAI messages with tool calls, ShareGPT function turns, TRL
prompt / completion; the canonical turns they become, and one error line for each kind of bad record."""

import json

import pytest
from test_data import error_of, write

from sdft.base.data import load_examples, with_response

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
# Two assistant turns and a tool call: the record the training acceptance test uses too.
TOOL_CHAT = {"messages": [
    {"role": "system", "content": "You check the weather."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "{\"temp\": 21}"},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."}],
    "tools": [WEATHER]}
CALL = {"role": "assistant", "content": "",
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}


def test_openai_tool_calls_become_canonical_turns(tmp_path):
    [ex] = load_examples(write(tmp_path / "t.jsonl", [TOOL_CHAT]))
    assert (ex.shape, ex.system, ex.instruction, ex.response) == (
        "messages", "You check the weather.", "Thanks!", "You are welcome.")
    assert ex.uses_tools and ex.tools == [WEATHER] and ex.history == [] and ex.assistant_turns() == 3
    assert [t["role"] for t in ex.turns] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert ex.turns[1] == CALL  # content null -> "", arguments parsed from their JSON text
    assert ex.turns[2] == {"role": "tool", "content": "{\"temp\": 21}", "tool_call_id": "c1", "name": "get_weather"}


def test_sharegpt_function_call_and_observation_turns(tmp_path):
    record = {"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "{\"temp\": 21}"},
        {"from": "gpt", "value": "21 degrees."}], "tools": json.dumps([WEATHER])}
    [ex] = load_examples(write(tmp_path / "s.jsonl", [record]))
    assert ex.shape == "sharegpt" and ex.tools == [WEATHER] and ex.response == "21 degrees."
    assert ex.turns[1] == {**CALL, "tool_calls": [{k: v for k, v in CALL["tool_calls"][0].items() if k != "id"}]}
    assert ex.turns[2] == {"role": "tool", "content": "{\"temp\": 21}"}
    # A call as the last turn is the response: its text is the call in <tool_call> form.
    [last] = load_examples(write(tmp_path / "c.jsonl", [{"conversations": record["conversations"][:2]}]))
    assert last.response == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_plain_multi_turn_keeps_history_pairs(tmp_path):
    """Without tools the turns alternate: history stays the pairs it always was (what single-turn code reads)."""
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                           {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    [ex] = load_examples(write(tmp_path / "m.jsonl", [record]))
    assert ex.history == [("Hi", "Hello!")] and not ex.uses_tools and ex.assistant_turns() == 2
    assert ex.conversation() == record["messages"]


def test_trl_prompt_completion_detected(tmp_path):
    [plain] = load_examples(write(tmp_path / "p.jsonl", [{"prompt": "Say hi.", "completion": "hi"}]))
    assert (plain.shape, plain.instruction, plain.response, plain.turns) == ("prompt_completion", "Say hi.", "hi", None)
    assert with_response(plain, "hello") == {"prompt": "Say hi.", "completion": "hello"}
    chat = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}],
            "completion": [CALL, {"role": "tool", "content": "21"}, {"role": "assistant", "content": "21 degrees."}],
            "tools": [WEATHER]}
    [ex] = load_examples(write(tmp_path / "c.jsonl", [chat]))
    assert (ex.shape, ex.system, ex.instruction, ex.response) == ("prompt_completion", "Be brief.",
                                                                 "Weather in Paris?", "21 degrees.")
    assert ex.assistant_turns() == 2 and ex.uses_tools
    assert with_response(ex, "x")["completion"][-1]["content"] == "x"


@pytest.mark.parametrize("turns, field, words", [
    ([{"role": "user", "content": "a"}, {**CALL, "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}],
     "messages[1].tool_calls[0].function.arguments", "not JSON"),
    ([{"role": "user", "content": "a"}, {**CALL, "tool_calls": [{"function": {"arguments": {}}}]}],
     "messages[1].tool_calls[0].function.name", "function name"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "tool", "content": "c"},
      {"role": "assistant", "content": "d"}], "messages[2]", "found 'tool'"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}],
     "messages[1]", "system message after"),
    ([{"role": "user", "content": "a"}, CALL, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
     "messages[2]", "expected a 'tool' message"),
])
def test_bad_tool_records_name_file_line_and_field(tmp_path, turns, field, words):
    message = error_of(write(tmp_path / "bad.jsonl", [TOOL_CHAT, {"messages": turns}]))
    assert "bad.jsonl" in message and "line 2" in message and f"field '{field}'" in message and words in message


def test_bad_function_call_and_tools(tmp_path):
    turns = [{"from": "human", "value": "a"}, {"from": "function_call", "value": "get_weather(city=Paris)"}]
    message = error_of(write(tmp_path / "f.jsonl", [{"conversations": turns}]))
    assert "field 'conversations[1].value'" in message and "JSON" in message
    message = error_of(write(tmp_path / "t.jsonl", [{**TOOL_CHAT, "tools": "[{"}]))
    assert "field 'tools'" in message
