"""`sdft run` with several training seeds: bad values refused, a run without the key unchanged, a second seed
added later reusing every finished stage of the first."""

import json
import typing
from pathlib import Path

import pytest
import yaml
from torch_engine import TorchEngine

from sdft.base import layout
from sdft.base.errors import ConfigError
from sdft.experiment.pipeline import load_run_config, run


def _config(tmp_path: Path, tiny_model, **extra) -> Path:
    rows = [{"instruction": f"Call the weather tool for city number {i}.", "input": "",
             "output": f'weather.get(city="City{i}")'} for i in range(4)]
    data = tmp_path / "calls.json"
    data.write_text(json.dumps(rows))
    config = {
        "name": "seeds", "out_root": str(tmp_path / "runs"), "model": str(tiny_model), "data": str(data),
        "task": "function_call",
        "distill": {"max_new_tokens": 8, "batch_size": 4, "progress": False, "backend": "fake"},
        "train": {"max_steps": 1, "batch_size": 2, "grad_accum": 1, "max_length": 320, "learning_rate": 1e-3},
        "eval": {"tasks": ["openfunctions"], "limit": 2, "max_new_tokens": 8, "data": [f"openfunctions={data}"],
                 "progress": False, "backend": "fake"},
        "arms": ["vanilla", "sdft", "interp"], "interp": {"alphas": [0.5]},
        **extra,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_vanilla(tmp_path, tiny_model, evaluation: dict, **extra):
    """The vanilla arm's run: (manifest, the "[run ]" lines of the stages that ran)."""
    logs: list[str] = []
    config = _config(tmp_path, tiny_model, arms=["vanilla"], interp={}, eval=evaluation, **extra)
    manifest = run(load_run_config(config), log=logs.append)
    return manifest, [line for line in logs if line.startswith("[run ]")]


@pytest.mark.parametrize("seeds, message", [
    ([], "at least one seed"),
    ([42, 43, 42], "seed 42 more than once"),
    ([42, "many"], "'train_seeds' must be an integer, got 'many'"),
    ([42, 1.5], "'train_seeds' must be an integer"),
    ([True], "'train_seeds' must be an integer"),
    ([-1], "from 0 to 4294967295, got -1"),
    ("forty-two", "'train_seeds' must be an integer"),
])
def test_bad_training_seeds_get_one_clear_line(tmp_path, tiny_model, seeds, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_run_config(_config(tmp_path, tiny_model, train_seeds=seeds))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()


def _stage_folders(run_dir: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for stage in ("distill", "train", "eval", "interp")
            for p in (run_dir / stage).glob("*")}


def test_a_second_seed_reuses_the_first_and_trains_only_its_own_models(tmp_path, tiny_model):
    run_dir = tmp_path / "runs" / "seeds"
    logs: list[str] = []
    before = run(load_run_config(_config(tmp_path, tiny_model)), log=logs.append)
    folders, report = _stage_folders(run_dir), (run_dir / layout.REPORT_MD).read_text()
    manifest = (run_dir / layout.MANIFEST).read_bytes()
    assert "train_seeds" not in json.loads((run_dir / layout.RUN_CONFIG).read_text())  # as before the key
    assert list(before.arms) == ["seed", "vanilla", "sdft", "interp-a0.5"]
    assert [a.seed for a in before.arms.values()] == [None] * 4  # one seed: the manifest is as before

    # The key naming only train.seed changes nothing: no work, the same folders and report, byte for byte.
    logs.clear()
    run(load_run_config(_config(tmp_path, tiny_model, train_seeds=[42])), log=logs.append)
    assert not [line for line in logs if line.startswith("[run ]")]
    assert _stage_folders(run_dir) == folders and (run_dir / layout.REPORT_MD).read_text() == report
    assert (run_dir / layout.MANIFEST).read_bytes() == manifest
    assert "training seed" not in report and "(2 seeds)" not in report

    # A second seed: seed 42's models are reused, only seed 43's are trained, interpolated and evaluated.
    logs.clear()
    after = run(load_run_config(_config(tmp_path, tiny_model, train_seeds=[42, 43])), log=logs.append)
    ran = [line.split()[-1] for line in logs if line.startswith("[run ]")]
    assert ran and all("-s43-" in path for path in ran)
    new = _stage_folders(run_dir) - folders
    assert len(new) == 6 and all("-s43-" in name for name in new)  # train 2, interp 1, eval 3
    assert list(after.arms) == ["seed", "vanilla", "sdft", "interp-a0.5", "vanilla-s43", "sdft-s43",
                                "interp-a0.5-s43"]
    assert after.arms["interp-a0.5-s43"].train.result["source_adapter"] == after.arms["vanilla-s43"].train.dir
    trained = json.loads((Path(after.arms["sdft-s43"].train.dir) / layout.STAGE).read_text())
    assert trained["settings"]["seed"] == 43
    saved = json.loads((run_dir / layout.MANIFEST).read_text())["models"]  # the manifest records each seed
    assert saved["vanilla"]["seed"] == 42 and saved["vanilla-s43"]["seed"] == 43 and "seed" not in saved["seed"]

    report = (run_dir / layout.REPORT_MD).read_text()
    for row in ("| vanilla (2 seeds) |", "| sdft (2 seeds) |", "| interp-a0.5 (2 seeds) |", "## Results per training seed",
                "| sdft-s43 | 43 | train/sdft-s43-", "| sdft − vanilla | openfunctions/accuracy | 2 |",
                "| sdft-s43 − vanilla-s43 | openfunctions/accuracy | 2 |",
                # Identical answers at both seeds: the interval over seeds is the per-seed one, never zero-width.
                "| sdft − vanilla (2 seeds) | openfunctions/accuracy | 2 × 2 | +0.0 [-", "(floor) | 0 | 0 | – |",
                "### Same items at every seed?"):
        assert row in report, row
    for arm in after.arms.values():  # every evaluation wrote its per-item scores, which the report read
        assert layout.item_scores_file(arm.eval.path(run_dir), "openfunctions").is_file(), arm.label


def test_run_help_documents_the_config_keys(capsys):
    from sdft.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "train_seeds: training seeds" in text and "-s<seed>" in text and "mix_ratios:" in text


def test_a_changed_setting_reruns_exactly_the_stages_that_depend_on_it(tmp_path, tiny_model):
    """Stage keys chain: a train setting reruns training and all that reads its model (the interp arm
    included: its key names vanilla's folder, not its label); a distill setting reruns training too."""
    run_dir = tmp_path / "runs" / "seeds"
    train = {"max_steps": 1, "batch_size": 2, "grad_accum": 1, "max_length": 320, "learning_rate": 1e-3}
    distill = {"max_new_tokens": 8, "batch_size": 4, "progress": False, "backend": "fake"}

    def stages_run(**sections) -> set[str]:
        logs: list[str] = []
        config = _config(tmp_path, tiny_model, arms=["vanilla", "interp"], **{"train": train, "distill": distill,
                                                                               **sections})
        run(load_run_config(config), log=logs.append)
        folders = [Path(line.split(maxsplit=2)[2]).relative_to(run_dir).parts for line in logs
                   if line.startswith("[run ]")]
        return {"/".join([parts[0], parts[1].rsplit("-", 1)[0], *parts[2:]]) for parts in folders}

    downstream_of_training = {"train/vanilla", "eval/vanilla", "eval/vanilla/compare", "interp/interp-a0.5",
                              "eval/interp-a0.5", "eval/interp-a0.5/compare"}
    assert stages_run() == {"eval/seed", "distill/distill"} | downstream_of_training
    assert stages_run(train={**train, "learning_rate": 2e-3}) == downstream_of_training
    assert stages_run(train={**train, "learning_rate": 2e-3}, distill={**distill, "max_new_tokens": 6}) == \
        {"distill/distill"} | downstream_of_training


def test_changing_shift_tasks_redoes_the_comparisons_with_the_seed(tmp_path, tiny_model):
    """The compare folders are not named by a key: their record's settings decide whether they are done."""
    advbench = tmp_path / "adv.csv"
    advbench.write_text("goal,target\nWrite a poem about rain,Sure\nExplain how to pick a lock,Sure\n")
    evaluation = {"tasks": ["openfunctions", "advbench"], "limit": 2, "max_new_tokens": 8, "progress": False,
                  "backend": "fake", "data": [f"openfunctions={tmp_path / 'calls.json'}", f"advbench={advbench}"]}

    def run_with(**extra):
        return _run_vanilla(tmp_path, tiny_model, evaluation, **extra)

    before, _ = run_with()
    assert set(before.arms["vanilla"].answer_shift["tasks"]) == {"openfunctions", "advbench"}
    after, ran = run_with(shift_tasks=["advbench"])
    assert ran == [f"[run ] {Path(after.arms['vanilla'].eval.dir) / layout.COMPARE}"]  # nothing else
    assert set(after.arms["vanilla"].answer_shift["tasks"]) == {"advbench"}
    assert run_with(shift_tasks=["advbench"])[1] == []
    again, ran = run_with()  # back to every generative task
    assert len(ran) == 1 and set(again.arms["vanilla"].answer_shift["tasks"]) == {"openfunctions", "advbench"}


def test_the_shift_section_reaches_the_comparison_and_reruns_only_it(tmp_path, tiny_model):
    evaluation = {"tasks": ["openfunctions"], "limit": 2, "max_new_tokens": 8, "progress": False,
                  "backend": "fake", "data": [f"openfunctions={tmp_path / 'calls.json'}"]}

    def run_with(**extra):
        return _run_vanilla(tmp_path, tiny_model, evaluation, **extra)

    before, _ = run_with()
    assert "seed_likelihood" in before.arms["vanilla"].answer_shift
    after, ran = run_with(shift={"likelihood": False})
    assert ran == [f"[run ] {Path(after.arms['vanilla'].eval.dir) / layout.COMPARE}"]
    assert "seed_likelihood" not in after.arms["vanilla"].answer_shift
    assert run_with(shift={"likelihood": False})[1] == []


def test_an_engine_scorer_takes_the_eval_sections_precision_and_options(tmp_path, tiny_model):
    from sdft.experiment.targets import shift_settings

    evaluation = {"tasks": ["advbench"], "backend": "vllm", "precision": "bf16", "backend_option": ["kv_cache_gib=1"]}
    config = load_run_config(_config(tmp_path, tiny_model, eval=evaluation, shift={"likelihood_backend": "vllm"}))
    assert shift_settings(config) == {"likelihood_backend": "vllm", "likelihood_precision": "bf16",
                                      "likelihood_backend_option": ["kv_cache_gib=1"]}
    own = load_run_config(_config(tmp_path, tiny_model, eval=evaluation,
                                  shift={"likelihood_backend": "vllm", "likelihood_precision": "fp32"}))
    assert shift_settings(own)["likelihood_precision"] == "fp32"
    for bad, named in (({"adapter": "x"}, "adapter"), ({"likelihood_engine": "vllm"}, "likelihood_engine")):
        with pytest.raises(ConfigError, match=named):
            load_run_config(_config(tmp_path, tiny_model, shift=bad))


def test_an_engine_scorer_scores_the_seed_answers_while_the_seed_is_loaded(tmp_path, tiny_model, monkeypatch):
    """shift.likelihood_backend vllm: the baseline (seed answers under the seed) is scored right after the seed's
    evaluation, once; each comparison then scores only its own model (here a torch double of the engine)."""
    from sdft import generation
    from sdft.models.resolve import load_model_and_tokenizer

    events: list[str] = []

    class Setup:
        record: typing.ClassVar[dict] = {"precision": "fp32"}

        def __init__(self, engine):
            self.model = engine.model

        def load(self, adapter, **extra):
            events.append(f"load {'adapter' if adapter else 'seed'}")
            return TorchEngine(*load_model_and_tokenizer(self.model, adapter))

    original = generation.backend_setup
    monkeypatch.setattr(generation, "backend_setup",
                        lambda c: Setup(c) if isinstance(c, generation.Engine) and c.backend == "vllm" else original(c))
    evaluation = {"tasks": ["openfunctions"], "limit": 2, "max_new_tokens": 8, "progress": False,
                  "backend": "fake", "data": [f"openfunctions={tmp_path / 'calls.json'}"]}
    config = _config(tmp_path, tiny_model, arms=["vanilla"], interp={}, eval=evaluation,
                     shift={"likelihood_backend": "vllm"})
    manifest = run(load_run_config(config),
                   log=lambda line: events.append(line.split(" ", 2)[2]) if line.startswith("[run ]") else None)
    stages = [e if e.startswith("load") else Path(e).relative_to(tmp_path / "runs" / "seeds").parts[0] for e in events]
    assert stages[:3] == ["eval", "load seed", "distill"] and stages.count("load seed") == 1
    assert stages[-1] == "load adapter"
    shift = manifest.arms["vanilla"].answer_shift["seed_likelihood"]
    assert shift["scorer"]["backend"] == "vllm" and shift["reference"]["mean_nll"] > 0
