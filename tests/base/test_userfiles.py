"""Hostile input files: each class gets one clear error (file, line or record, field), never a traceback,
a hang or a silently wrong value. One test per class."""

import csv
import gzip
import os
import threading

import pytest

from sdft.base.config import from_dict, load_yaml
from sdft.base.data import load_examples
from sdft.base.errors import ConfigError, DataError
from sdft.base.templates import load_template
from sdft.train.config import TrainConfig


def data_error(path) -> str:
    with pytest.raises(DataError) as info:
        load_examples(str(path))
    return str(info.value)


def test_fifo_and_devices_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    result = {}
    # Opening a FIFO with no writer blocks forever: run it in a thread so a regression fails, not hangs.
    worker = threading.Thread(target=lambda: result.setdefault("message", data_error(fifo)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reading a FIFO hung"
    assert result["message"] == f"{fifo}: is a FIFO (named pipe), not a regular file; give a data file"
    assert "character device" in data_error("/dev/zero")
    config = tmp_path / "config.yaml"
    os.mkfifo(config)
    with pytest.raises(ConfigError, match="FIFO"):
        load_yaml(config)


@pytest.mark.parametrize("name,text,where", [
    ("d.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "b", "output": "c"}\n',
     "line 2: key 'output' appears twice"),
    ("d.json", '[{"instruction": "a", "output": "b", "instruction": "z"}]', "record 1: key 'instruction' appears"),
    ("d.json", '{"data": [{"instruction": "a", "output": "b"}], "data": []}', "key 'data' appears twice"),
    ("d.jsonl", '{"messages": [{"role": "user", "content": "a", "content": "b"}]}\n',
     "line 1, field 'messages[0]': key 'content' appears twice"),
])
def test_duplicate_json_keys_are_refused(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    assert where in data_error(path)


def test_duplicate_yaml_keys_are_refused_but_merge_keys_work(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\nlearning_rate: 0.1\nepochs: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line 3: key 'epochs' appears twice .*first on line 1"):
        load_yaml(config)
    config.write_text("base: &b {epochs: 1}\nrun:\n  <<: *b\n  epochs: 2\n")  # an override, not a duplicate
    assert load_yaml(config)["run"] == {"epochs": 2}
    template = tmp_path / "t.json"
    template.write_text('{"user": "{instruction}", "user": "x"}')
    with pytest.raises(ConfigError, match="key 'user' appears twice"):
        load_template(str(template), "prompt")


def test_lone_surrogates_are_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "ok", "output": "fine"}\n{"instruction": "bad \\ud800 text", "output": "x"}\n')
    assert "d.jsonl, line 2, field 'instruction': text holds a lone surrogate (\\ud800" in data_error(path)
    json_path = tmp_path / "k.json"
    json_path.write_text('[{"instruction": "a", "output": "b", "\\udfff": 1}]')
    assert "record 1" in data_error(json_path) and "lone surrogate" in data_error(json_path)


def test_deep_nesting_is_refused(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)  # beyond the parser's recursion limit
    assert data_error(deep) == f"{deep}: nested more than 100 levels deep"
    moderate = tmp_path / "moderate.jsonl"
    moderate.write_text('{"instruction": ' + "[" * 500 + "]" * 500 + ', "output": "x"}\n')
    assert data_error(moderate) == f"{moderate}, line 1, field 'instruction': nested more than 100 levels deep"
    config = tmp_path / "deep.yaml"
    config.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested more than 100 levels deep"):
        load_yaml(config)


def test_yaml_alias_bomb_and_recursive_alias_are_refused_quickly(tmp_path):
    lines, previous = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'], "a"
    for name in "bcdefghi":  # 9^9 = 387 million strings once expanded
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="aliases .* expand to more than 100000 values"):
        load_yaml(bomb)
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("columns: &a [*a]\n")
    with pytest.raises(ConfigError, match="refers to a value that contains it"):
        load_yaml(recursive)
    small = tmp_path / "small.yaml"
    small.write_text("targets: &t [q_proj, v_proj]\nother: *t\n")  # a few aliases stay fine
    assert load_yaml(small)["other"] == ["q_proj", "v_proj"]


def test_huge_csv_field_loads_and_broken_csv_is_one_line(tmp_path):
    big = tmp_path / "big.csv"
    big.write_text("instruction,output\n" + '"' + "x" * (10 * 1024 * 1024) + '",ok\n')
    (example,) = load_examples(str(big))
    assert len(example.instruction) == 10 * 1024 * 1024
    # Any error of the csv parser is one line with its line number; here: a field over a (lowered) limit.
    limit = csv.field_size_limit(1000)
    try:
        broken = tmp_path / "broken.csv"
        broken.write_text("instruction,output\na,b\n" + "y" * 2000 + ",b\n")
        assert data_error(broken) == f"{broken}, line 3: cannot parse as CSV (field larger than field limit (1000))"
    finally:
        csv.field_size_limit(limit)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_gzip_is_one_line(tmp_path, damage):
    packed = gzip.compress(b'{"instruction": "a", "output": "b"}\n' * 2000)
    content = {"truncated": packed[:len(packed) // 2], "garbage": packed[:10] + b"\x00garbage" * 20,
               "empty": packed[:5]}[damage]
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(content)
    assert data_error(path).startswith(f"{path}: not a readable gzip file")


def test_a_compressed_line_of_gigabytes_stops_at_the_bound_naming_the_line(tmp_path):
    """Issue 26, item 5: 2 MB of .jsonl.gz holding one 2 GiB line drove sdft distill past 6.5 GB. Here
    256 MiB in 256 KiB: refused at the line bound (64 MiB), naming the file and line, with memory to match."""
    import tracemalloc

    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(b'{"instruction": "a", "output": "b"}\n{"instruction": "')
        for _ in range(256):
            f.write(b"a" * (1 << 20))
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        message = data_error(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == (f"{path}, line 2: line longer than 64 MiB once decompressed; a record that long is not "
                       "data sdft can use")
    assert peak < 160 << 20, f"{peak >> 20} MiB"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["learning_rate", "epochs", "warmup_ratio", "lora_dropout"])
def test_non_finite_numbers_are_refused(name, value):
    with pytest.raises(ConfigError, match=f"'{name}' must be a finite number"):
        from_dict(TrainConfig, {"data": "d.jsonl", "out": "o", name: value})


def test_non_finite_yaml_numbers_are_refused(tmp_path):
    from sdft.evaluate.config import EvalConfig

    config = tmp_path / "c.yaml"
    config.write_text("tasks: [gsm8k]\ntemperature: .nan\n")
    with pytest.raises(ConfigError, match="'temperature' must be a finite number"):
        from_dict(EvalConfig, load_yaml(config), str(config))


def test_settings_with_lone_surrogates_are_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text('data: "train\\ud800.jsonl"\n')
    with pytest.raises(ConfigError, match="'data' text holds a lone surrogate"):
        from_dict(TrainConfig, {"out": "o", **load_yaml(config)}, str(config))
    undecodable_argv = b"d\xff.jsonl".decode("utf-8", "surrogateescape")  # how Python passes such bytes
    with pytest.raises(ConfigError, match="command line: 'data' text holds a lone surrogate"):
        from_dict(TrainConfig, {"out": "o", "data": undecodable_argv}, "command line")
