"""``sdft distill --stream-answers`` (the default): every pending prompt in one stream, saved as answers come back,
resumed after an interruption without duplicates or gaps, with the same rewrites and verdicts as chunk by chunk."""

import json
from contextlib import closing

import pytest
from test_distill import AppleRewriterDouble, _fake_config, _write_math

from sdft.distill.stage import distill
from sdft.generation import saved_as_they_come


class StreamingRewriter(AppleRewriterDouble):
    """AppleRewriterDouble with a ``generate_stream``: answers come back last request first (finish order is not
    input order), optionally interrupted after N answers. Records what each stream and generate call held."""

    streams: list = []
    calls: list = []
    stop_after = None

    def generate(self, prompts, params):
        StreamingRewriter.calls.append(list(prompts))
        return super().generate(prompts, params)

    def generate_stream(self, requests, groups=None):
        StreamingRewriter.streams.append((len(requests), list(groups), {id(p) for _, p in requests}))
        for n, i in enumerate(reversed(range(len(requests)))):
            if StreamingRewriter.stop_after is not None and n >= StreamingRewriter.stop_after:
                raise KeyboardInterrupt
            yield i, AppleRewriterDouble.generate(self, [requests[i][0]], requests[i][1])[0]


@pytest.fixture
def rewriter():
    StreamingRewriter.streams, StreamingRewriter.calls, StreamingRewriter.stop_after = [], [], None
    return "test_distill_stream:StreamingRewriter"


def _config(tmp_path, data, backend, out, **kw):
    config = _fake_config(tmp_path, data, batch_size=2, **kw)
    config.backend, config.out = backend, str(tmp_path / out)
    return config


def _lines(tmp_path, out, name="distilled.jsonl"):
    return (tmp_path / out / name).read_text().splitlines()


def test_one_stream_gives_the_rewrites_and_verdicts_of_chunk_by_chunk(tmp_path, rewriter):
    data = _write_math(tmp_path / "math.json", 7)
    streamed = distill(_config(tmp_path, data, rewriter, "streamed"))
    assert len(StreamingRewriter.streams) == 1 and not StreamingRewriter.calls
    size, groups, params = StreamingRewriter.streams[0]
    # Every prompt at once; its group is the chunk the other path would put it in (sampling seeds follow it).
    assert size == 7 and groups == [0, 0, 1, 1, 2, 2, 3] and len(params) == 1
    chunked = distill(_config(tmp_path, data, rewriter, "chunked", stream_answers=False))
    assert [len(c) for c in StreamingRewriter.calls] == [2, 2, 2, 1]
    assert _lines(tmp_path, "streamed") == _lines(tmp_path, "chunked")
    assert {k: v for k, v in streamed.items() if k not in ("output", "generation_seconds", "tokens_per_second")} == \
        {k: v for k, v in chunked.items() if k not in ("output", "generation_seconds", "tokens_per_second")}
    # Each answer's seconds: the time since the answer before it, so they add up to the stream's time.
    seconds = [json.loads(line)["seconds"] for line in _lines(tmp_path, "streamed", "progress.jsonl")]
    assert all(s >= 0 for s in seconds) and streamed["generation_seconds"] == pytest.approx(sum(seconds), abs=0.01)


def test_an_interrupted_stream_keeps_what_came_back_and_resumes_without_duplicates(tmp_path, rewriter):
    data = _write_math(tmp_path / "math.json", 7)
    reference = distill(_config(tmp_path, data, rewriter, "whole"))
    StreamingRewriter.stop_after = 3
    with pytest.raises(KeyboardInterrupt):
        distill(_config(tmp_path, data, rewriter, "cut"))
    kept = [json.loads(line)["id"] for line in _lines(tmp_path, "cut", "progress.jsonl")]
    assert len(kept) == 3 and not (tmp_path / "cut" / "distilled.jsonl").exists()  # saved at the stop, not lost
    StreamingRewriter.stop_after = None
    resumed = distill(_config(tmp_path, data, rewriter, "cut"))
    assert StreamingRewriter.streams[-1][0] == 4  # only what was missing was asked again
    ids = [json.loads(line)["id"] for line in _lines(tmp_path, "cut", "progress.jsonl")]
    assert len(ids) == len(set(ids)) == 7
    assert _lines(tmp_path, "cut") == _lines(tmp_path, "whole") and resumed["accepted"] == reference["accepted"]


def test_saved_as_they_come_saves_after_every_interval_at_the_end_and_on_an_early_stop():
    saved = []
    assert list(saved_as_they_come(range(5), saved.append, every_s=0)) == [0, 1, 2, 3, 4]
    assert saved == [[0], [1], [2], [3], [4]]  # every item once the interval has passed
    saved.clear()
    assert list(saved_as_they_come(range(5), saved.append, every_s=3600)) == list(range(5))
    assert saved == [[0, 1, 2, 3, 4]]  # at the end
    saved.clear()
    closed = []

    def source():
        try:
            yield from range(10)
        finally:
            closed.append(True)
    with closing(saved_as_they_come(source(), saved.append, every_s=3600)) as items:
        for item in items:
            if item == 2:
                break
    assert saved == [[0, 1, 2]] and closed == [True]  # what came back is kept; the source is closed
