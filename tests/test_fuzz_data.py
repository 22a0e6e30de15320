"""Property-based fuzzing of the data and config loaders: whatever the file holds, the result is valid
examples or one clear SdftError line -- never another exception, never a hang.

Bounded so that it runs in seconds: a fixed number of examples per test, a per-example deadline, and
derandomized (the same inputs every run, so a failure reproduces; hypothesis prints the falsifying file).
"""

import gzip
import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")  # in the dev extra: pip install -e '.[dev]'
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sdft.base.config import from_dict, load_yaml  # noqa: E402
from sdft.base.data import Example, load_examples  # noqa: E402
from sdft.base.errors import SdftError  # noqa: E402
from sdft.train.config import TrainConfig  # noqa: E402

FUZZ = settings(max_examples=60, deadline=3000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KEYS = st.sampled_from(["instruction", "input", "output", "question", "answer", "goal", "target", "messages",
                        "conversations", "role", "content", "from", "value", "history", "system", "id", "sdft",
                        "data", "x", "\ud800", "a\nb", ""])
TEXT = st.text(max_size=40) | st.sampled_from(["", "\\ud800", "\ud800", "\x00", "a\nb", "\"", "{}", "[]"])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(KEYS, inner, max_size=5), max_leaves=25)
RECORD = st.dictionaries(KEYS, JSON_VALUES, max_size=6)


def check(suffix: str, content: bytes) -> None:
    """The property: valid examples, or one SdftError with a one-line message naming the file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        try:
            examples = load_examples(str(path))
        except SdftError as exc:
            message = str(exc)
            assert message and "\n" not in message and str(path) in message, message
            return
        assert examples and all(isinstance(ex, Example) for ex in examples)
        for ex in examples:
            assert isinstance(ex.instruction, str) and isinstance(ex.response, str)
            ex.instruction.encode("utf-8"), ex.response.encode("utf-8")  # valid text, no lone surrogates


def jsonl(records, raw_lines) -> bytes:
    lines = [json.dumps(r) for r in records] + raw_lines
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def with_duplicate(record: dict) -> str:
    text = json.dumps(record)
    return text[:-1] + (', ' if record else '') + '"output": "dup", "output": "again"}'


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".json", ".jsonl", ".csv", ".tsv", ".jsonl.gz", ".parquet"]))
def test_random_bytes(content, suffix):
    check(suffix, content)


@FUZZ
@given(st.lists(RECORD, max_size=5), st.lists(TEXT | st.builds(with_duplicate, RECORD), max_size=3),
       st.booleans())
def test_json_lines(records, raw_lines, compressed):
    content = jsonl(records, raw_lines)
    check(".jsonl.gz" if compressed else ".jsonl", gzip.compress(content) if compressed else content)


@FUZZ
@given(JSON_VALUES | st.lists(RECORD, max_size=5) | st.dictionaries(KEYS, st.lists(RECORD, max_size=3), max_size=3),
       st.integers(min_value=0, max_value=3))
def test_json_documents(value, cut):
    text = json.dumps(value)
    check(".json", text[:len(text) - cut].encode("utf-8", "surrogatepass"))  # whole, or torn at the end


@FUZZ
@given(st.lists(st.lists(TEXT, min_size=1, max_size=4), min_size=1, max_size=5), st.sampled_from([",", "\t"]))
def test_delimited_text(rows, delimiter):
    content = "\n".join(delimiter.join(row) for row in rows)
    check(".csv" if delimiter == "," else ".tsv", content.encode("utf-8", "surrogatepass"))


YAML_SNIPPETS = st.sampled_from(["epochs: 2", "epochs: .nan", "learning_rate: .inf", "epochs: 2\nepochs: 3",
                                 "a: &a [1, 2]\nb: [*a, *a]", "lora_targets: &t [*t]", "[1, 2]", "!!python/none x",
                                 "data: [", "- a\n- b", "? [a]\n: b", "out: {x: 1}", "batch_size: 1e400",
                                 "limit: -5", "seed: 1.5", "'\\ud800': 1", "\t- x"])


@FUZZ
@given(st.lists(YAML_SNIPPETS | st.text(max_size=30), max_size=4))
def test_config_files(parts):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes("\n".join(parts).encode("utf-8", "surrogatepass"))
        try:
            from_dict(TrainConfig, {"data": "d.jsonl", "out": "o", **load_yaml(path)}, str(path))
        except SdftError as exc:  # checks of the built config (validate) name the key, not the file
            assert str(exc) and "\n" not in str(exc), str(exc)
