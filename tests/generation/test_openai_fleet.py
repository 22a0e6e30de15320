"""A fleet of servers behind ``--endpoint URL1,URL2`` (issue 26, item 7), against stub HTTP servers: one dies
mid-run, one hangs, one answers HTTP 500 or garbage. The same with two real ``vllm serve``: test_vllm_fleet.py."""

from __future__ import annotations

import json

import pytest
from openai_stub import StubServer

from sdft.base.errors import SdftError
from sdft.generation import GenerationParams, load_backend

N = 40


def _backend(urls, **options):
    return load_backend("openai", "stub", None, progress=False, endpoint=urls, backoff=0.01, **options)


def _distill(data, out, urls, *options):
    from sdft.distill.config import DistillConfig
    from sdft.distill.stage import distill

    return distill(DistillConfig(data=str(data), out=str(out), model="stub", backend="openai", endpoint=urls,
                                 batch_size=1, max_new_tokens=8, progress=False,
                                 backend_option=["request_chunk=8", "max_concurrency=4", "backoff=0.01", *options]))


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": f"{i}."}) + "\n" for i in range(N)))
    return path


def _reference(data, tmp_path) -> str:
    """The same job on one healthy server: answers depend on the prompt and its seed, not on the server."""
    with StubServer() as server:
        _distill(data, tmp_path / "ref", [server.url])
    return (tmp_path / "ref" / "distilled.jsonl").read_text()


def _progress_ids(out) -> list[str]:
    return [json.loads(line)["id"] for line in (out / "progress.jsonl").read_text().splitlines()]


def test_a_server_killed_mid_run_leaves_its_requests_to_the_other(data, tmp_path, capsys):
    """The run finishes on the survivor, every record once and as one server alone would have written it,
    the dead server gets no new request once dropped, and stderr says which server went and how many
    requests moved."""
    out = tmp_path / "out"
    with StubServer(delay=0.05, script=[None] * 5 + ["die"]) as dying, StubServer(delay=0.05) as survivor:
        stats = _distill(data, out, [dying.url, survivor.url], "retries=0")  # no retry budget: moves are free
    assert stats["examples"] == N
    ids = _progress_ids(out)
    assert sorted(ids) == sorted(set(ids)) and len(ids) == N
    assert (out / "distilled.jsonl").read_text() == _reference(data, tmp_path)
    assert len(dying.posts()) <= 6 + 4  # the one that killed it, and what it had in flight or still let in
    err = capsys.readouterr().err
    dropped = [line for line in err.splitlines() if "dropped" in line]
    assert dropped and dying.url in dropped[0] and survivor.url in dropped[0]
    moved = [line for line in err.splitlines() if "moved" in line]
    assert len(moved) == 1 and dying.url in moved[0]
    count = int(moved[0].split("sdft: ")[1].split()[0])
    assert 1 <= count <= 4 + 4  # what it had in flight when it died, and what reached it before the drop
    assert N - 5 <= len(survivor.posts()) < N  # its own half, and what moved: at most 5 answered by the other

def test_a_hanging_server_is_dropped_after_its_timeouts(data, tmp_path, capsys):
    out = tmp_path / "out"
    with StubServer(delay=5.0) as hung, StubServer() as healthy:
        stats = _distill(data, out, [hung.url, healthy.url], "timeout=0.5", "retries=0")
    assert stats["examples"] == N and sorted(_progress_ids(out)) == sorted(set(_progress_ids(out)))
    assert len(hung.posts()) <= 4 + 4  # its first requests, then none: not N/2 waits of 0.5 s
    assert "timed out" in next(line for line in capsys.readouterr().err.splitlines() if "dropped" in line)


def test_a_server_answering_500_is_dropped_and_the_run_finishes(data, tmp_path, capsys):
    out = tmp_path / "out"
    with StubServer(script=[500] * N) as erring, StubServer() as healthy:
        _distill(data, out, [erring.url, healthy.url])
    assert (out / "distilled.jsonl").read_text() == _reference(data, tmp_path)
    line = next(line for line in capsys.readouterr().err.splitlines() if "dropped" in line)
    assert erring.url in line and "HTTP 500" in line


def test_one_failure_does_not_drop_a_server():
    with StubServer(script=[503]) as blip, StubServer() as other:
        backend = _backend(f"{blip.url},{other.url}", max_concurrency=1)
        backend.generate([f"q{i}" for i in range(8)], GenerationParams(max_new_tokens=4))
    assert len(blip.posts()) == 4 and len(other.posts()) == 4 + 1  # still half of the work; the retry moved


def test_when_every_server_is_gone_the_job_fails_in_one_line_naming_them(data, tmp_path):
    """The first dies in the first chunk, the other (now alone) in a later one: its requests fail after their
    retries, in one line naming it and the one dropped before."""
    with StubServer(delay=0.05, script=[None, "die"]) as first, \
            StubServer(delay=0.05, script=[None] * 12 + ["die"]) as last, \
            pytest.raises(SdftError, match="failed after") as err:
        _distill(data, tmp_path / "out", [first.url, last.url], "retries=1")
    message = str(err.value)
    assert "\n" not in message and last.url in message and f"dropped earlier: {first.url}" in message


@pytest.mark.parametrize("step, what", [("garbage", "not JSON"), ("empty", "not a completion")])
def test_garbage_from_one_server_stops_the_job_in_one_line_naming_it(step, what, tmp_path, capsys):
    """A server that answers something else than a completion is misconfigured (a proxy's error page, another
    API): not dropped quietly, its answers could be wrong in ways not seen; one line names it and the fault."""
    from sdft.cli import main

    rows = [{"question": f"{i}+1?", "answer": f"#### {i + 1}"} for i in range(8)]
    gsm8k = tmp_path / "g.jsonl"
    gsm8k.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with StubServer() as healthy, StubServer(script=[None, step]) as broken:
        code = main(["eval", "--backend", "openai", "--endpoint", f"{healthy.url},{broken.url}", "--model", "stub",
                     "--tasks", "gsm8k", "--data", f"gsm8k={gsm8k}", "--out", str(tmp_path / "e"), "--no-progress",
                     "--backend-option", "max_concurrency=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"endpoint {broken.url}/completions answered" in err[0] and what in err[0]
    assert healthy.url not in err[0]
