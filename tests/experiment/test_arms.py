"""Arms of a run config: which models get trained, with which settings, and one clear line for bad arms."""

from __future__ import annotations

import pytest

from sdft.base.errors import ConfigError
from sdft.experiment import arms

ALL = ["vanilla", "sdft", "onpolicy", "replay", "interp", "sdft+replay"]
SECTIONS = {"replay": {"data": "general.json", "ratio": 0.5, "source": "seed"}, "onpolicy": {"teacher": "ema"},
            "interp": {"alphas": [0.5, 0.25]}}


def test_every_arm_becomes_a_training_point_with_its_settings():
    points = {p.label: p for p in arms.train_points(ALL, SECTIONS, mix_ratios=[0, 0.5, 1], sample_sizes=[16])}
    assert list(points) == ["vanilla", "mix0.5", "sdft", "onpolicy", "replay", "sdft+replay", "vanilla-n16",
                            "sdft-n16"]
    assert points["vanilla"].overrides == {} and points["sdft"].mix_ratio == 1.0
    # vanilla, SDFT and the mixtures are one recipe (the report's mix-ratio plot and tables read them so).
    assert {points[k].recipe for k in ("vanilla", "mix0.5", "sdft", "sdft-n16")} == {"mix"}
    assert points["sdft"].params == {"mix_ratio": 1.0, "sample_size": None}
    assert points["replay"].recipe == "replay" and points["replay"].params["targets"] == "originals"
    assert points["onpolicy"].overrides == {"objective": "onpolicy", "onpolicy_teacher": "ema"}
    assert points["onpolicy"].mix_ratio == 0.0  # on-policy learns from the original demonstrations
    replay = {"replay_data": "general.json", "replay_ratio": 0.5, "replay_source": "seed", "replay_max_new_tokens": 256}
    assert points["replay"].overrides == replay and points["replay"].mix_ratio == 0.0
    assert points["sdft+replay"].overrides == replay and points["sdft+replay"].mix_ratio == 1.0
    assert points["sdft-n16"].sample_size == 16
    assert arms.interp_labels(SECTIONS) == [("interp-a0.25", 0.25), ("interp-a0.5", 0.5)]


def test_default_arms_are_todays_vanilla_and_sdft():
    points = arms.train_points(arms.DEFAULT_ARMS, {}, mix_ratios=[0.0, 1.0], sample_sizes=[])
    assert [(p.label, p.mix_ratio) for p in points] == [("vanilla", 0.0), ("sdft", 1.0)]


@pytest.mark.parametrize("names, sections, train, message", [
    (["vanila"], {}, {}, "unknown arm.*vanila.*known arms"),
    (["vanilla", "vanilla"], {}, {}, "each arm once"),
    (["sdft", "interp"], {}, {}, "add vanilla"),
    (["vanilla", "interp"], {}, {"method": "full"}, "LoRA adapter"),
    (["vanilla", "replay"], {}, {}, "replay: {data: FILE}"),
    (["vanilla"], {"onpolicy": {"teacher": "base"}}, {}, "section 'onpolicy' is set but no arm uses it"),
    (["vanilla", "onpolicy"], {"onpolicy": {"teacher": "teacher"}}, {}, "onpolicy_teacher.*base, ema, live"),
    (["vanilla", "onpolicy"], {"onpolicy": {"divergence": 2}}, {}, "onpolicy_divergence"),
    (["vanilla", "onpolicy"], {"onpolicy": {"colour": 1}}, {}, "unknown key.*onpolicy_colour"),
    (["vanilla", "interp"], {"interp": {"alphas": [1.5]}}, {}, r"\[0, 1\]"),
    (["vanilla", "replay"], {"replay": {"data": "g.json", "ratio": 0}}, {}, "replay_ratio"),
])
def test_bad_arms_get_one_clear_line(names, sections, train, message):
    with pytest.raises(ConfigError, match=message):
        arms.check(names, sections, train)


def test_a_run_gives_every_arm_the_batch_order_of_its_train_section(tmp_path):
    import json

    from sdft.base.config import from_dict, keyed_settings
    from sdft.experiment.config import RunConfig
    from sdft.experiment.pipeline import stage_configs

    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}]))
    run = {"name": "x", "data": str(data), "arms": ["vanilla", "sdft", "replay"], "replay": {"data": str(data)},
           "eval": {"tasks": ["gsm8k"]}}
    train = stage_configs(from_dict(RunConfig, {**run, "train": {"batch_order": "index"}}, "run.yaml"))["train"]
    assert train.batch_order == "index" and keyed_settings(train)["batch_order"] == "index"
    # Unset, the setting stays out of the key: earlier runs keep their training folders.
    assert "batch_order" not in keyed_settings(stage_configs(from_dict(RunConfig, run, "run.yaml"))["train"])


def test_format_aware_arms_bring_the_settings_of_their_own_distillation():
    points = {p.label: p for p in arms.train_points(["vanilla", "sdft-guard", "self-answer"],
                                                     {"guard": {"min_length_ratio": 0.25}}, [], [])}
    assert points["sdft-guard"].distill == {"format_guard": True, "guard_min_length_ratio": 0.25,
                                            "guard_max_length_ratio": 2.0}
    assert points["self-answer"].distill == {"self_answer": True} and points["vanilla"].distill == {}
    assert points["sdft-guard"].mix_ratio == points["self-answer"].mix_ratio == 1.0  # they learn the targets
    assert not points["self-answer"].overrides  # the same train settings as every other arm
    assert points["self-answer"].params == {"targets": "rewrites", "self_answer": True}


def test_the_prose_arm_trains_on_the_runs_rewrites_with_prose_targets():
    points = {p.label: p for p in arms.train_points(["vanilla", "sdft", "sdft-prose"], {}, [], [])}
    prose = points["sdft-prose"]
    assert prose.overrides == {"prose_targets": True} and prose.distill == {} and prose.mix_ratio == 1.0
    assert prose.params == {"targets": "rewrites", "prose_targets": True}


def test_the_replay_section_takes_train_replay_settings_and_pins_the_answers_engine_only_when_set():
    from sdft.base.config import from_dict, keyed_settings
    from sdft.train.config import TrainConfig

    plain = arms._overrides("replay", {"replay": {"data": "g.json", "source": "seed"}})
    pinned = arms._overrides("replay", {"replay": {"data": "g.json", "source": "seed", "backend": "vllm",
                                                   "precision": "bf16"}})
    assert "replay_backend" not in plain and pinned["replay_backend"] == "vllm" and pinned["replay_precision"] == "bf16"
    train = {"data": "-", "out": "-"}
    assert keyed_settings(from_dict(TrainConfig, {**train, **plain}))["replay_source"] == "seed"
    assert keyed_settings(from_dict(TrainConfig, {**train, **pinned}))["replay_backend"] == "vllm"
    with pytest.raises(ConfigError, match=r"replay section: unknown key\(s\) colour; known keys: backend, data"):
        arms.replay_section({"replay": {"data": "g.json", "colour": "blue"}})
