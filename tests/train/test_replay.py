"""The replay arm: deterministic mixing, any data shape, seed answers generated once and cached."""

from __future__ import annotations

import json

import pytest

from sdft.base.errors import ConfigError, SdftError
from sdft.generation.fake import FakeBackend
from sdft.train import replay
from sdft.train.config import TrainConfig
from sdft.train.stage import prepare

QA = [("What is 2 + 3?", "The answer is 5."), ("Add 1 and 1.", "2"), ("Name a fruit.", "An apple."), ("Say hi.", "Hello!")]


class CannedSeed(FakeBackend):
    """TEST DOUBLE for the seed model: a short answer, or a long one (cut by the budget) about fruit."""

    built = 0

    def __init__(self, model=None, adapter=None, **options):
        CannedSeed.built += 1
        super().__init__(model, adapter, respond=lambda p: "seed says " + ("very long " * 40 if "fruit" in p
                                                                           else "ok"), **options)


@pytest.fixture
def task_data(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps([{"instruction": q, "input": "", "output": a} for q, a in QA * 2]))
    return path


@pytest.fixture
def general_gsm8k_jsonl(tmp_path):
    """Replay data in another shape and format than the task data (gsm8k fields, JSONL)."""
    path = tmp_path / "general.jsonl"
    path.write_text("".join(json.dumps({"question": f"general question {i}?", "answer": f"general answer {i}"}) + "\n"
                            for i in range(10)))
    return path


def config(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), out=str(out), max_steps=2, batch_size=4, grad_accum=1,
                max_length=256, save_steps=100, logging_steps=100)
    return TrainConfig(**{**base, **kw})


def test_choice_is_seeded_nested_and_capped():
    from types import SimpleNamespace

    examples = [SimpleNamespace(id=f"e{i}") for i in range(10)]
    quarter, _ = replay.choose(examples, 8, 0.25, seed=3)
    half, info = replay.choose(examples, 8, 0.5, seed=3)
    assert len(quarter) == 2 and len(half) == 4 and info["requested"] == 4 and not info["capped"]
    assert {e.id for e in quarter} < {e.id for e in half} and half == sorted(half, key=examples.index)  # a larger share adds, never swaps; file order
    for seed in range(20):  # at every seed, not by luck at one
        ids = [{e.id for e in replay.choose(examples, 8, share, seed)[0]} for share in (0.25, 0.5)]
        assert ids[0] < ids[1]
    assert replay.choose(examples, 8, 0.5, seed=3) == (half, info)
    assert replay.choose(examples, 8, 0.5, seed=4)[0] != half
    everything, info = replay.choose(examples, 8, 2.0, seed=3)
    assert everything == examples and info["capped"] and info["requested"] == 16


def test_replay_examples_of_another_shape_join_the_training_data(tiny_model, task_data, general_gsm8k_jsonl,
                                                                 tmp_path):
    # system_prompt=template: the template's own system text shows which template rendered each prompt.
    run = prepare(config(tiny_model, task_data, tmp_path / "out", replay_data=str(general_gsm8k_jsonl),
                         replay_ratio=0.5, system_prompt="template"))
    replayed = [t for t in run.targets if t.replay]
    assert len(replayed) == 4 and len(run.targets) == 12
    assert all("general question" in t.prompt and t.response.startswith("general answer") for t in replayed)
    assert all("Below is an instruction" in t.prompt for t in replayed)  # the general (alpaca) template
    assert run.counts["replay_examples"] == 4 and run.counts["task_examples"] == 8
    record = run.counts["replay"]
    assert record["source"] == "data" and record["examples"] == 4 and record["path"] == str(general_gsm8k_jsonl)
    # The same seed picks the same replay examples again.
    again = prepare(config(tiny_model, task_data, tmp_path / "again", replay_data=str(general_gsm8k_jsonl),
                           replay_ratio=0.5))
    assert [t.id for t in again.targets if t.replay] == [t.id for t in replayed]


def test_resuming_with_an_edited_replay_file_is_refused(tiny_model, task_data, general_gsm8k_jsonl, tmp_path):
    """--resume continues checkpoints only with the same data: the replay file's contents count too (and
    train.json records them)."""
    from sdft.base.config import stage_key
    from sdft.base.provenance import file_sha256
    from sdft.train import data as train_data
    from sdft.train.stage import resume_key

    out = tmp_path / "out"
    settings = dict(replay_data=str(general_gsm8k_jsonl), replay_ratio=0.5, resume=True)
    first = config(tiny_model, task_data, out, **settings)
    checkpoint = out / "checkpoints" / "checkpoint-1"  # what a run killed after its first checkpoint leaves
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    key = resume_key(first, file_sha256(task_data))
    (out / "checkpoints" / "sdft-run.json").write_text(json.dumps(key))
    assert train_data.resume_point(first, out, resume_key(first, file_sha256(task_data))) == checkpoint
    plain = config(tiny_model, task_data, out)  # without replay: the key checkpoints of earlier versions carry
    assert resume_key(plain, file_sha256(task_data))["key"] == stage_key(plain, file_sha256(task_data))

    with general_gsm8k_jsonl.open("a") as fh:
        fh.write(json.dumps({"question": "one more?", "answer": "yes"}) + "\n")
    with pytest.raises(ConfigError, match="replay_sha256"):
        prepare(first)
    run = prepare(config(tiny_model, task_data, tmp_path / "fresh", **settings))
    assert run.counts["replay"]["sha256"] == file_sha256(general_gsm8k_jsonl)


def test_seed_answers_are_generated_once_cached_and_cut_ones_dropped(tiny_model, task_data, tmp_path,
                                                                     monkeypatch):
    from sdft.generation import register_backend

    monkeypatch.setenv("SDFT_HOME", str(tmp_path / "home"))
    register_backend("canned-seed", "test_replay:CannedSeed")
    CannedSeed.built = 0
    settings = dict(replay_data=str(task_data), replay_ratio=1.0, replay_source="seed", replay_max_new_tokens=30,
                    replay_backend="canned-seed")
    run = prepare(config(tiny_model, task_data, tmp_path / "a", **settings))
    replayed = [t for t in run.targets if t.replay]
    assert CannedSeed.built == 1
    assert replayed and all(t.response.startswith("seed says ok") for t in replayed)
    info = run.counts["replay"]
    assert info["dropped_truncated"] == 2 and info["examples"] == 6  # the fruit answers hit the budget
    assert len(list((tmp_path / "home" / "replay").glob("*.jsonl"))) == 1
    prepare(config(tiny_model, task_data, tmp_path / "b", **settings))
    assert CannedSeed.built == 1  # the second run reads the cache
    # Another token budget or system prompt changes the seed's answers: a new cache, never the old one.
    prepare(config(tiny_model, task_data, tmp_path / "c", **{**settings, "replay_max_new_tokens": 60}))
    assert CannedSeed.built == 2
    prepare(config(tiny_model, task_data, tmp_path / "d", **settings, system_prompt="none"))
    assert CannedSeed.built == 3 and len(list((tmp_path / "home" / "replay").glob("*.jsonl"))) == 3


def test_bad_replay_settings_get_one_clear_line(tiny_model, task_data, tmp_path):
    with pytest.raises(ConfigError, match="need --replay-data"):
        config(tiny_model, task_data, tmp_path, replay_ratio=0.5).validate()
    with pytest.raises(ConfigError, match="replay_ratio"):
        config(tiny_model, task_data, tmp_path, replay_data=str(task_data)).validate()
    with pytest.raises(ConfigError, match="replay_ratio"):
        config(tiny_model, task_data, tmp_path, replay_data=str(task_data), replay_ratio=-1).validate()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": 3, "output": "y"}]))
    with pytest.raises(SdftError, match="bad.json"):
        prepare(config(tiny_model, task_data, tmp_path / "o", replay_data=str(bad), replay_ratio=0.5))


class StreamingSeed(CannedSeed):
    """TEST DOUBLE: CannedSeed with a ``generate_stream`` whose answers come back last request first, and which can
    be interrupted after N answers."""

    streams: list = []
    stop_after = None

    def generate_stream(self, requests, groups=None):
        StreamingSeed.streams.append((len(requests), list(groups)))
        for n, i in enumerate(reversed(range(len(requests)))):
            if StreamingSeed.stop_after is not None and n >= StreamingSeed.stop_after:
                raise KeyboardInterrupt
            yield i, self.generate([requests[i][0]], requests[i][1])[0]


def test_seed_answers_come_in_one_stream_and_an_interrupted_one_resumes_without_duplicates(
        tiny_model, task_data, tmp_path, monkeypatch):
    from sdft.generation import register_backend

    monkeypatch.setenv("SDFT_HOME", str(tmp_path / "home"))
    register_backend("streaming-seed", "test_replay:StreamingSeed")
    StreamingSeed.streams, StreamingSeed.stop_after = [], 3
    settings = dict(replay_data=str(task_data), replay_ratio=1.0, replay_source="seed", replay_max_new_tokens=30,
                    replay_backend="streaming-seed", batch_size=1)  # batches of 4 answers in the chunked loop
    with pytest.raises(KeyboardInterrupt):
        prepare(config(tiny_model, task_data, tmp_path / "a", **settings))
    cache = next((tmp_path / "home" / "replay").glob("*.jsonl"))
    assert len(cache.read_text().splitlines()) == 3  # what came back before the stop is kept
    assert StreamingSeed.streams == [(8, [0, 0, 0, 0, 1, 1, 1, 1])]  # all at once, grouped as the batches
    StreamingSeed.stop_after = None
    run = prepare(config(tiny_model, task_data, tmp_path / "b", **settings))
    assert StreamingSeed.streams[-1][0] == 5  # only the missing answers asked again
    ids = [json.loads(line)["id"] for line in cache.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 8
    replayed = [t for t in run.targets if t.replay]
    assert replayed and all(t.response.startswith("seed says ok") for t in replayed)
