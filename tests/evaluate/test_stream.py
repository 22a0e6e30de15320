"""``sdft eval --stream-answers``: every task's missing answers in one stream, saved as they come, resumed after a
crash without duplicates or gaps, the same answers and scores as one task at a time, and that older way's
batches unchanged."""

import json

import pytest
from test_evaluate import CountingBackend, fake_backends, fake_config, small_data  # noqa: F401 (fixtures)

from sdft.evaluate.stage import evaluate
from sdft.generation import GenerationParams, stream
from sdft.generation.fake import FakeBackend


class StreamingBackend(CountingBackend):
    """CountingBackend with a ``generate_stream``: answers come back last request first (finish order is not
    input order), and it can be interrupted after N answers."""

    def __init__(self, stop_after=None):
        super().__init__(respond=lambda p: f"{len(p) % 7} I'm sorry.")
        self.streams, self.streamed, self.stop_after = [], [], stop_after

    def generate_stream(self, requests, groups=None):
        self.streams.append((list(requests), list(groups)))
        for i in reversed(range(len(requests))):
            if self.stop_after is not None and len(self.streamed) >= self.stop_after:
                raise KeyboardInterrupt
            prompt, params = requests[i]
            completion = FakeBackend.generate(self, [prompt], params)[0]
            self.calls.pop()  # ``calls`` keeps generate() calls made by the stage only
            self.streamed.append(prompt)
            yield i, completion


@pytest.fixture
def two_tasks(tmp_path, small_data, fake_backends):  # noqa: F811 (fixtures)
    made, plan = fake_backends

    def config(out, **over):
        values = {"tasks": ["gsm8k", "mine"], "out": str(tmp_path / out),
                  "data": [f"gsm8k={small_data['gsm']}", f"mine={small_data['custom']}"],
                  "checker": ["mine=test_evaluate:contains_answer"]}
        return fake_config(tmp_path, **{**values, **over})
    return made, plan, config


def _answers(folder, task):
    return [(r["id"], r.get("sample"), r["completion"], r["score"])
            for r in map(json.loads, (folder / "generations" / f"{task}.jsonl").read_text().splitlines())]


def _cached_lines(folder):
    return [json.loads(line) for f in sorted((folder / "generations" / ".cache").glob("*.jsonl"))
            for line in f.read_text().splitlines()]


def test_every_task_in_one_stream_with_each_tasks_params_and_the_same_results(tmp_path, two_tasks):
    made, plan, config = two_tasks
    plan["fake-model"] = StreamingBackend
    streamed = evaluate(config("streamed"))
    backend = made[-1][1]
    assert len(backend.streams) == 1 and not backend.calls  # one stream, no generate() call
    requests, groups = backend.streams[0]
    gsm8k_budget = streamed["tasks"]["gsm8k"]["settings"]["decoding"]["max_new_tokens"]
    assert [params.max_new_tokens for _, params in requests[:4]] == [gsm8k_budget] * 4 and len(requests) == 6
    assert groups == [("gsm8k", 0)] * 4 + [("mine", 0)] * 2
    made_by = streamed["stream"]["tasks"]
    assert {n: m["answers"] for n, m in made_by.items()} == {"gsm8k": 4, "mine": 2}
    shares = [streamed["tasks"][n]["stream_seconds"] for n in ("gsm8k", "mine")]
    assert sum(shares) == pytest.approx(streamed["stream"]["seconds"], abs=0.02)
    assert all(streamed["tasks"][n]["seconds"] >= streamed["tasks"][n]["stream_seconds"] for n in made_by)
    alone = evaluate(config("alone", stream_answers=False))
    assert len(made[-1][1].calls) == 3 and not made[-1][1].streams  # one task and one chunk of 2 at a time
    assert "stream" not in alone and "stream_seconds" not in alone["tasks"]["gsm8k"]
    for task in ("gsm8k", "mine"):
        assert _answers(tmp_path / "streamed", task) == _answers(tmp_path / "alone", task)  # input order
        assert streamed["tasks"][task]["value"] == alone["tasks"][task]["value"]
        assert streamed["tasks"][task]["settings"]["settings_key"] == alone["tasks"][task]["settings"]["settings_key"]


def test_a_stream_stopped_midway_keeps_what_came_and_the_rerun_makes_only_the_rest(tmp_path, two_tasks):
    made, plan, config = two_tasks
    plan["fake-model"] = lambda: StreamingBackend(stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config("out"))
    first = made[-1][1].streamed
    assert len(first) == 4 and len(_cached_lines(tmp_path / "out")) == 4  # saved before the error went up
    plan["fake-model"] = StreamingBackend
    result = evaluate(config("out"))
    rest = made[-1][1].streamed
    assert len(rest) == 2 and not set(rest) & set(first)  # only the two missing
    lines = _cached_lines(tmp_path / "out")
    assert len(lines) == 6 and len({(r["key"], r["prompt"]) for r in lines}) == 6  # none twice, none lost
    assert sum(m["answers"] for m in result["stream"]["tasks"].values()) == 2
    assert result["tasks"]["gsm8k"]["n"] == 4 and result["tasks"]["mine"]["n"] == 2
    count = len(made)
    again = evaluate(config("out"))
    assert "stream" not in again and len(made) == count  # nothing missing: no stream, the model not even loaded


def test_a_task_found_in_the_cache_stays_out_of_the_stream_and_samples_stream_by_group(tmp_path, two_tasks):
    made, plan, config = two_tasks
    plan["fake-model"] = StreamingBackend
    evaluate(config("out", tasks=["gsm8k"], checker=[], data=[f"gsm8k={tmp_path / 'gsm.jsonl'}"],
                    temperature=0.7, n_samples=2))
    result = evaluate(config("out", temperature=0.7, n_samples=2))
    requests, groups = made[-1][1].streams[0]
    assert groups == [("mine", 0)] * 2 + [("mine", 1)] * 2  # gsm8k's eight answers were cached
    assert [params.seed for _, params in requests] == [42, 42, 43, 43]  # sample j: seed + j
    assert list(result["stream"]["tasks"]) == ["mine"]
    keys = [r["key"] for r in _cached_lines(tmp_path / "out")]
    assert len(set(keys)) == len(keys) == 12 and all(k.endswith(("#0", "#1")) for k in keys)


def test_decoding_probes_go_one_task_at_a_time(tmp_path, two_tasks):
    made, plan, config = two_tasks
    plan["fake-model"] = StreamingBackend
    evaluate(config("probe", answer_prefix="1."))
    backend = made[-1][1]
    assert not backend.streams and all(p.endswith("1.") for p in backend.prompts)


def test_one_task_at_a_time_keeps_its_batches_one_sample_and_one_chunk_per_call(tmp_path, two_tasks):
    """--no-stream-answers: the calls a backend received before streaming existed (4 items, batch 3, 2 samples)."""
    made, plan, config = two_tasks
    evaluate(config("out", tasks=["gsm8k"], checker=[], data=[f"gsm8k={tmp_path / 'gsm.jsonl'}"], batch_size=3,
                    temperature=0.7, n_samples=2, stream_answers=False))
    calls = made[-1][1].calls
    assert [(len(prompts), params.seed) for prompts, params in calls] == [(3, 42), (1, 42), (3, 43), (1, 43)]


def test_without_a_stream_of_its_own_a_backend_gets_runs_of_equal_params_and_group_in_chunks():
    backend = FakeBackend("fake-model", respond=lambda p: p.upper())
    a, b = GenerationParams(max_new_tokens=5), GenerationParams(max_new_tokens=9)
    requests = [(f"p{i}", a) for i in range(5)] + [("q0", b), ("q1", b), ("p5", a), ("r0", a), ("r1", a)]
    groups = ["t"] * 8 + ["u"] * 2  # r0, r1: another task with p's params
    found = list(stream(backend, requests, chunk=2, groups=groups))
    assert [i for i, _ in found] == list(range(10))
    assert [c.text for _, c in found] == [p.upper() for p, _ in requests]
    assert [(len(prompts), params.max_new_tokens) for prompts, params in backend.calls] == [
        (2, 5), (2, 5), (1, 5), (2, 9), (1, 5), (2, 5)]
