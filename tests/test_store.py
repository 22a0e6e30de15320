"""ProgressFile: torn lines from a crash are dropped, duplicates ignored, results written in input order."""

import json

import pytest

from sdft.store import ProgressFile, read_jsonl


def test_torn_tail_is_dropped_and_work_resumes(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "v": 1}) + "\n" + '{"id": "b", "v"')  # kill -9 mid-write
    progress = ProgressFile(path)
    assert progress.done("a") and not progress.done("b")
    assert path.read_text().count("\n") == 1  # the torn line is gone from disk too
    progress.append([{"id": "b", "v": 2}, {"id": "a", "v": 99}])  # "a" again is ignored
    assert ProgressFile(path).records == {"a": {"id": "a", "v": 1}, "b": {"id": "b", "v": 2}}


def test_finalize_writes_input_order_and_refuses_gaps(tmp_path):
    progress = ProgressFile(tmp_path / "p.jsonl")
    progress.append([{"id": "2"}, {"id": "1"}])
    progress.finalize(["1", "2"], tmp_path / "out.jsonl")
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["1", "2"]
    with pytest.raises(RuntimeError, match="not finished"):
        progress.finalize(["1", "2", "3"], tmp_path / "out2.jsonl")
