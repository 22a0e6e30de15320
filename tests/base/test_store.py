"""ProgressFile: torn lines from a crash are dropped and duplicates ignored; the cache root."""

import json
from pathlib import Path

from sdft.base.store import ProgressFile, sdft_home


def test_torn_tail_is_dropped_and_work_resumes(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "v": 1}) + "\n" + '{"id": "b", "v"')  # kill -9 mid-write
    progress = ProgressFile(path)
    assert progress.done("a") and not progress.done("b")
    assert path.read_text().count("\n") == 1  # the torn line is gone from disk too
    progress.append([{"id": "b", "v": 2}, {"id": "a", "v": 99}])  # "a" again is ignored
    assert ProgressFile(path).records == {"a": {"id": "a", "v": 1}, "b": {"id": "b", "v": 2}}


def test_sdft_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SDFT_HOME", str(tmp_path))
    assert sdft_home() == tmp_path
    monkeypatch.delenv("SDFT_HOME")
    assert sdft_home() == Path.home() / ".cache" / "sdft"
