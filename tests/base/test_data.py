"""Data loading: formats, shapes, column mapping, stable ids, response replacement, distilled files, errors."""

import csv
import gzip
import json
import sys
import types

import pytest

from sdft.base import hub
from sdft.base.data import Example, is_distilled, load_examples, load_records, pick_response, with_response
from sdft.base.errors import ConfigError, DataError, SdftError

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
]
GSM8K = [{"question": "What is 6 x 12?", "answer": "6 x 12 = 72\n#### 72"},
         {"question": "What is 1 + 1?", "answer": "1 + 1 = 2. The answer is 2."}]
SHAREGPT = [{"conversations": [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
    {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
MESSAGES = [{"messages": [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
    {"role": "assistant", "content": "Paris."}]}]


def write(path, records, fmt=None):
    fmt = fmt or path.suffix
    if fmt == ".json":
        path.write_text(json.dumps(records, indent=2))
    elif fmt == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == ".csv":
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    elif fmt == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_examples(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, SdftError)
    return message


# ------------------------------------------------------------------------------------------- formats

@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_each_format_loads_alpaca(tmp_path, suffix):
    path = write(tmp_path / f"data{suffix}", ALPACA)
    examples = load_examples(path)
    assert [e.instruction for e in examples] == ["Add the numbers.\n\n2 and 3", "Name a colour."]
    assert [e.response for e in examples] == ["5", "Blue."]
    assert examples[0].shape == "alpaca" and examples[0].source == ALPACA[0]
    unit = {".json": "record", ".jsonl": "line", ".csv": "line", ".parquet": "record"}[suffix]
    first = 2 if suffix == ".csv" else 1  # CSV: the header is line 1, as an editor shows it
    assert examples[1].location == f"{path}, {unit} {first + 1}"
    assert [loc for loc, _ in load_records(path)] == [e.location for e in examples]


def test_json_wrapped_list_and_jsonl_named_json(tmp_path):
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 2, "data": GSM8K}))
    assert [e.response for e in load_examples(wrapped)] == [r["answer"] for r in GSM8K]
    lines = write(tmp_path / "lines.json", GSM8K, fmt=".jsonl")
    assert len(load_examples(lines)) == 2 and load_examples(lines)[1].location.endswith("line 2")


def test_jsonl_blank_lines_gzip_and_tsv(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(("\n" + json.dumps(GSM8K[0]) + "\n\n" + json.dumps(GSM8K[1]) + "\n").encode()))
    assert [e.location.rsplit(", ", 1)[1] for e in load_examples(path)] == ["line 2", "line 4"]
    tsv = tmp_path / "d.tsv"
    tsv.write_text("goal\ttarget\nDo X\tSure, here is X\n")
    (example,) = load_examples(tsv)
    assert (example.shape, example.instruction, example.response) == ("advbench", "Do X", "Sure, here is X")


def test_csv_multiline_cell_keeps_editor_line_numbers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,output\n"two\nlines",a\nsecond,b\n')
    examples = load_examples(path)
    assert examples[0].instruction == "two\nlines"
    assert [e.location for e in examples] == [f"{path}, line 2", f"{path}, line 4"]


# -------------------------------------------------------------------------------------------- shapes

def test_alpaca_history_system_and_multiarith(tmp_path):
    record = {"instruction": "And 3+3?", "input": None, "output": "6", "system": "Math tutor.",
              "history": [["1+1?", "2"], ["2+2?", "4"]]}
    (example,) = load_examples(write(tmp_path / "a.json", [record]))
    assert example.history == [("1+1?", "2"), ("2+2?", "4")] and example.system == "Math tutor."
    multiarith = [{"instruction": "Tom has 3 apples and buys 2. How many?", "output": "The answer is 5."}]
    (example,) = load_examples(write(tmp_path / "m.json", multiarith))
    assert (example.shape, example.response, example.history, example.system) == ("alpaca", "The answer is 5.", [], None)


def test_gsm8k_shape(tmp_path):
    examples = load_examples(write(tmp_path / "g.json", GSM8K))
    assert [e.shape for e in examples] == ["gsm8k", "gsm8k"]
    assert examples[0].instruction == "What is 6 x 12?" and examples[0].response.endswith("#### 72")


def test_sharegpt_shape(tmp_path):
    (example,) = load_examples(write(tmp_path / "s.jsonl", SHAREGPT))
    assert (example.shape, example.system, example.instruction, example.response) == ("sharegpt", "Be brief.", "2+2?", "4")
    assert example.history == [("Hi", "Hello!")]


def test_messages_shape(tmp_path):
    (example,) = load_examples(write(tmp_path / "m.jsonl", MESSAGES))
    assert (example.shape, example.system, example.instruction, example.response) == (
        "messages", "You are helpful.", "Capital of France?", "Paris.")
    assert example.history == [("Hi", "Hello!")]


def test_forced_shape_and_bad_shape_name(tmp_path):
    path = write(tmp_path / "g.json", [{"question": "q", "answer": "a", "instruction": "i", "output": "o"}])
    assert load_examples(path)[0].shape == "alpaca"
    assert load_examples(path, shape="gsm8k")[0].instruction == "q"
    with pytest.raises(ConfigError, match="accepted: auto, alpaca"):
        load_examples(path, shape="dolly")


def test_column_mapping(tmp_path):
    path = write(tmp_path / "c.csv", [{"prompt": "Say hi", "completion": "hi", "ctx": "politely", "key": "k1"}])
    (example,) = load_examples(path, columns={"instruction": "prompt", "response": "completion",
                                              "input": "ctx", "id": "key"})
    assert (example.instruction, example.response, example.id) == ("Say hi\n\npolitely", "hi", "k1")
    assert with_response(example, "hello")["completion"] == "hello"
    # Mapping only the response keeps the detected shape's instruction column.
    path = write(tmp_path / "g.json", [{"question": "q?", "solution": "s"}])
    (example,) = load_examples(path, columns={"response": "solution"})
    assert (example.shape, example.instruction, example.response) == ("gsm8k", "q?", "s")
    with pytest.raises(ConfigError, match="unknown column role"):
        load_examples(path, columns={"prompt": "question"})


def test_limit_takes_first_n(tmp_path):
    path = write(tmp_path / "g.json", GSM8K * 3)
    assert [e.id for e in load_examples(path, limit=2)] == [e.id for e in load_examples(path)][:2]
    assert load_examples(path, limit=0) == []


# ----------------------------------------------------------------------------------------------- ids

def test_ids_stable_and_unique_for_duplicates(tmp_path):
    path = write(tmp_path / "d.jsonl", [ALPACA[0], ALPACA[0], ALPACA[1]])
    first, second = load_examples(path), load_examples(path)
    assert [e.id for e in first] == [e.id for e in second]
    assert len({e.id for e in first}) == 3
    assert first[0].id.split("-")[1] == first[1].id.split("-")[1]  # same content, different index


def test_own_ids_used_when_unique(tmp_path):
    own = [dict(r, id=i) for i, r in enumerate(GSM8K, 7)]
    assert [e.id for e in load_examples(write(tmp_path / "a.json", own))] == ["7", "8"]
    clash = [dict(r, id="x") for r in GSM8K]
    ids = [e.id for e in load_examples(write(tmp_path / "b.json", clash))]
    assert len(set(ids)) == 2 and "x" not in ids


# ---------------------------------------------------------------------------------- with_response

@pytest.mark.parametrize("records,key", [(ALPACA, "output"), (GSM8K, "answer"), (SHAREGPT, None), (MESSAGES, None)])
def test_with_response_round_trip(tmp_path, records, key):
    path = write(tmp_path / "d.jsonl", records)
    before = load_examples(path)
    rewritten = [with_response(e, f"new {i}") for i, e in enumerate(before)]
    assert [e.source for e in before] == records  # the loaded source is not mutated
    for old, new in zip(records, rewritten):
        changed = {k for k in old if old[k] != new[k]}
        assert changed == {key or next(iter(old))}
    after = load_examples(write(tmp_path / "out.jsonl", rewritten))
    assert [e.response for e in after] == [f"new {i}" for i in range(len(records))]
    assert [(e.instruction, e.history, e.system, e.id) for e in after] == \
           [(e.instruction, e.history, e.system, e.id) for e in before]


def test_with_response_on_hand_built_example():
    example = Example(id="1", instruction="q", response="a", source={"question": "q", "answer": "a"}, shape="gsm8k")
    assert with_response(example, "b") == {"question": "q", "answer": "b"}


# ---------------------------------------------------------------------------------- distilled files

def distilled_records():
    return [
        dict(GSM8K[0], answer="Rewritten. The answer is 72.",
             sdft={"accepted": True, "reason": "ok", "rewrite": "Rewritten. The answer is 72.", "original": GSM8K[0]["answer"]}),
        dict(GSM8K[1], sdft={"accepted": False, "reason": "wrong_answer", "rewrite": "It is 3.", "original": GSM8K[1]["answer"]}),
    ]


def test_distilled_file_loads_and_picks_responses(tmp_path):
    path = write(tmp_path / "distilled.jsonl", distilled_records())
    examples = load_examples(path)
    assert [e.shape for e in examples] == ["gsm8k", "gsm8k"] and all(map(is_distilled, examples))
    assert examples[0].source["sdft"]["reason"] == "ok"
    assert [pick_response(e, True) for e in examples] == ["Rewritten. The answer is 72.", GSM8K[1]["answer"]]
    assert [pick_response(e, False) for e in examples] == [r["answer"] for r in GSM8K]
    # Same prompts, same ids as the original file: a distilled record keeps its identity.
    assert [e.id for e in examples] == [e.id for e in load_examples(write(tmp_path / "o.json", GSM8K))]
    # An id recorded by `sdft distill` wins (the original may have had ids from a mapped column).
    tagged = distilled_records()
    for n, rec in enumerate(tagged):
        rec["sdft"]["id"] = f"k{n}"
    assert [e.id for e in load_examples(write(tmp_path / "t.jsonl", tagged))] == ["k0", "k1"]
    plain = load_examples(write(tmp_path / "p.json", GSM8K))[0]
    assert not is_distilled(plain) and pick_response(plain, True) == plain.response


def test_distilled_record_checked(tmp_path):
    bad = distilled_records()
    bad[1]["sdft"]["accepted"] = "yes"
    message = error_of(write(tmp_path / "distilled.jsonl", bad))
    assert "line 2" in message and "field 'sdft.accepted'" in message


# ------------------------------------------------------------------------------------------- errors

def test_broken_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GSM8K[0]) + "\n" + json.dumps(GSM8K[1]) + '\n{"question": "q", "answer": \n')
    message = error_of(path)
    assert "broken.jsonl" in message and "line 3" in message and "invalid JSON" in message


def test_broken_json_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"question": "q", "answer": "a"},\n  {"question": "q" "answer": "a"}\n]\n')
    message = error_of(path)
    assert "broken.json" in message and "line 3" in message


def test_missing_field_names_record_and_field(tmp_path):
    path = write(tmp_path / "miss.json", [ALPACA[0], {"instruction": "x", "input": ""}])
    message = error_of(path)
    assert "miss.json" in message and "record 2" in message and "field 'output'" in message and "missing" in message
    # A near miss (wrong response column) names the expected field and what was found.
    message = error_of(write(tmp_path / "near.jsonl", [{"instruction": "x", "response": "y"}]))
    assert "line 1" in message and "field 'output'" in message and "fields found: instruction, response" in message


def test_empty_response_and_instruction(tmp_path):
    message = error_of(write(tmp_path / "e.csv", [{"question": "q", "answer": "a"}, {"question": "q2", "answer": "  "}]))
    assert "e.csv" in message and "line 3" in message and "field 'answer'" in message and "empty response" in message
    message = error_of(write(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                   {"role": "assistant", "content": ""}]}]))
    assert "field 'messages[1].content'" in message and "empty response" in message
    assert "empty instruction" in error_of(write(tmp_path / "i.json", [{"instruction": "", "output": "x"}]))


@pytest.mark.parametrize("value,kind", [(42, "a number"), (["a", "b"], "a list"), ({"a": 1}, "an object")])
def test_wrong_type(tmp_path, value, kind):
    message = error_of(write(tmp_path / "t.json", [ALPACA[0], {"instruction": value, "output": "x"}]))
    assert "record 2" in message and "field 'instruction'" in message and f"expected text, got {kind}" in message


def test_bad_history_and_chat_structure(tmp_path):
    message = error_of(write(tmp_path / "h.json", [dict(ALPACA[0], history=[["only one"]])]))
    assert "field 'history[0]'" in message
    turns = [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]
    message = error_of(write(tmp_path / "s.jsonl", [{"conversations": turns}]))
    assert "field 'conversations[1]'" in message and "alternate" in message
    message = error_of(write(tmp_path / "r.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                                   {"role": "robot", "content": "b"}]}]))
    assert "field 'messages[1].role'" in message and "unknown role 'robot'" in message
    message = error_of(write(tmp_path / "u.jsonl", [{"messages": [{"role": "user", "content": "a"}]}]))
    assert "last message must be the assistant" in message


def test_unknown_shape_lists_fields_and_shapes(tmp_path):
    message = error_of(write(tmp_path / "u.jsonl", [{"query": "a", "reply": "b"}]))
    assert "line 1" in message and "fields found: query, reply" in message
    assert all(name in message for name in ("alpaca", "gsm8k", "sharegpt", "messages", "prompt_completion",
                                            "columns="))


def test_all_records_validated_and_counted(tmp_path):
    records = GSM8K + [{"question": "q", "answer": ""}] * 3
    message = error_of(write(tmp_path / "g.json", records), limit=1)
    assert "record 3" in message and "2 more bad record(s)" in message


@pytest.mark.parametrize("name,content,expected", [
    ("empty.jsonl", "", "file is empty"),
    ("blank.json", "  \n", "file is empty"),
    ("none.json", "[]", "holds no records"),
    ("header.csv", "question,answer\n", "holds no records"),
    ("data.txt", "hello", "unsupported file type '.txt'"),
    ("scalar.jsonl", '{"question": "q", "answer": "a"}\n[1, 2]\n', "line 2: expected a JSON object"),
    ("obj.json", '{"a": 1}', "expected a list of records"),
    ("short.csv", "question,answer\nq\n", "line 2: row has 1 values but the header has 2"),
    ("latin.jsonl", b'{"question": "q", "answer": "a"}\n{"question": "caf\xe9"}\n', "line 2: not UTF-8"),
])
def test_file_level_errors(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    message = error_of(path)
    assert message.startswith(str(path)) and expected in message


def test_missing_file_and_folder(tmp_path):
    assert "no such file" in error_of(tmp_path / "nope.jsonl")
    assert "no such file, and not a Hugging Face" in error_of("data/train.json")  # has a data suffix: never a hub name
    assert "is a folder" in error_of(tmp_path)


# ----------------------------------------------------------------------------------------------- hub

def fake_datasets(monkeypatch, behaviour):
    calls = []

    def load_dataset(repo, config=None, split=None):
        calls.append((repo, config, split))
        return behaviour()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.setattr(hub, "missing_dataset", lambda repo: None)
    return calls


def test_hub_name_goes_through_load_dataset(monkeypatch):
    calls = fake_datasets(monkeypatch, lambda: GSM8K)
    examples = load_examples("openai/gsm8k:main:test")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert examples[1].location == "openai/gsm8k:main:test, record 2" and examples[0].shape == "gsm8k"
    load_records("org/name")
    load_records("org/name:validation")
    assert calls[1:] == [("org/name", None, "train"), ("org/name", None, "validation")]


def test_hub_failures_are_one_sentence(monkeypatch):
    def offline():
        raise ConnectionError("Couldn't reach 'org/name' on the Hub (LocalEntryNotFoundError)")
    fake_datasets(monkeypatch, offline)
    message = error_of("org/name")
    assert message.startswith("org/name: no such local file, and cannot load 'org/name'")
    assert "Couldn't reach" in message
    monkeypatch.setattr(hub, "reachable", lambda: False)
    assert "from the local cache" in error_of("org/name")
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.setattr(hub, "missing_dataset", lambda repo: f"no dataset '{repo}' on the Hugging Face hub")
    assert error_of("org/name") == "org/name: no such local file, and no dataset 'org/name' on the Hugging Face hub"


# ------------------------------------------------------------------------------------- shared data

@pytest.mark.parametrize("name,shape,count", [
    ("gsm8k_train.json", "gsm8k", 7473), ("alpaca_train.json", "alpaca", 2000),
    ("openfunction_test.json", "alpaca", 112), ("harmful_behaviors.csv", "advbench", 520),
])
def test_paper_data_files(shared_data, name, shape, count):
    path = shared_data / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    examples = load_examples(path)
    assert len(examples) == count and {e.shape for e in examples} == {shape}
    assert len({e.id for e in examples}) == count
    assert all(e.instruction.strip() and e.response.strip() for e in examples)
