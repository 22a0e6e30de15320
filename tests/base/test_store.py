"""ProgressFile: torn lines from a crash are dropped and duplicates ignored."""

import json

from sdft.base.store import ProgressFile


def test_torn_tail_is_dropped_and_work_resumes(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "v": 1}) + "\n" + '{"id": "b", "v"')  # kill -9 mid-write
    progress = ProgressFile(path)
    assert progress.done("a") and not progress.done("b")
    assert path.read_text().count("\n") == 1  # the torn line is gone from disk too
    progress.append([{"id": "b", "v": 2}, {"id": "a", "v": 99}])  # "a" again is ignored
    assert ProgressFile(path).records == {"a": {"id": "a", "v": 1}, "b": {"id": "b", "v": 2}}
