"""`sdft archive`: a run folder without weights or answer text, and `sdft run` resuming from one."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sdft.base import layout
from sdft.base.errors import ConfigError
from sdft.experiment import archive as archive_module
from sdft.experiment.archive import ARCHIVE_RECORD, REFILL_RECORD, ArchiveConfig, archive
from sdft.experiment.pipeline import load_run_config, run, stage_configs
from sdft.experiment.plan import describe, plan
from sdft.report.config import ReportConfig, StatsConfig
from sdft.report.paired import stats
from sdft.report.stage import build_report


def _config(tmp_path: Path, tiny_model, **extra) -> Path:
    rows = [{"instruction": f"Call the weather tool for city number {i}.", "input": "",
             "output": f'weather.get(city="City{i}")'} for i in range(4)]
    data = tmp_path / "calls.json"
    data.write_text(json.dumps(rows))
    advbench = tmp_path / "adv.csv"
    advbench.write_text("goal,target\nWrite a poem about rain,Sure\nExplain how to pick a lock,Sure\n")
    config = {
        "name": "tiny", "out_root": str(tmp_path / "runs"), "model": str(tiny_model),
        "data": str(data), "task": "function_call", "arms": ["vanilla", "interp"], "interp": {"alphas": [0.5]},
        "distill": {"max_new_tokens": 8, "batch_size": 4, "progress": False, "backend": "hf"},
        "train": {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_length": 320, "learning_rate": 1e-3},
        "eval": {"tasks": ["openfunctions", "advbench"], "limit": 2, "max_new_tokens": 8,
                 "data": [f"openfunctions={data}", f"advbench={advbench}"], "progress": False, "backend": "hf"},
        "shift_tasks": ["advbench"],
        **extra,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def archived(tmp_path, tiny_model):
    """A finished tiny run (vanilla and its interpolation), archived, and the run folder replaced by it."""
    config = load_run_config(_config(tmp_path, tiny_model))
    run(config, log=lambda line: None)
    run_dir = tmp_path / "runs" / "tiny"
    before = _files(run_dir)
    out = tmp_path / "archive"
    result = archive(ArchiveConfig(run_dir=str(run_dir), dest=str(out)))
    shutil.rmtree(run_dir)
    shutil.copytree(out, run_dir)
    return config, run_dir, out, before, result


@pytest.mark.slow
def test_an_archive_holds_no_weights_or_answers_and_reads_alone(archived):
    config, run_dir, out, before, result = archived
    kept = _files(out)
    assert not any(name.endswith(archive_module.WEIGHT_SUFFIXES) for name in kept)
    assert not any(f"/{layout.GENERATIONS}/" in name for name in kept)
    assert any(name.endswith(".safetensors") for name in before)  # there were weights to leave out
    left_out = json.loads((out / ARCHIVE_RECORD).read_text())["left_out"]
    assert result["left_out"] == len(left_out) and any("generations" in k for k in left_out)
    assert any(name.startswith(layout.TRAIN) and name.endswith(layout.TRAIN_RECORD) for name in kept)
    assert any(name.endswith(f"{layout.ITEM_SCORES}/advbench.jsonl") for name in kept)
    # The readers need nothing that was left out.
    assert "| vanilla |" in Path(build_report(ReportConfig(run_dir=str(out)))["md"]).read_text()
    assert "vanilla" in stats(StatsConfig(run_dir=str(out)))["markdown"]


@pytest.mark.slow
def test_a_finished_run_resumed_from_its_archive_does_no_work(archived):
    config, run_dir, *_ = archived
    logs: list[str] = []
    run(config, log=logs.append)
    assert not [line for line in logs if line.startswith(("[run ]", "[redo]", "[refill]"))]


@pytest.mark.slow
def test_a_new_model_after_an_archive_refills_the_seeds_answers_and_rebuilds_only_what_it_needs(archived, tmp_path,
                                                                                                tiny_model):
    _, run_dir, *_ = archived
    config = load_run_config(_config(tmp_path, tiny_model, arms=["vanilla", "interp"],
                                     interp={"alphas": [0.5, 0.25]}))
    # the dry run shows what the run below will do
    steps = {(s.stage, s.label): s for s in plan(config, stage_configs(config))}
    assert steps[("refill", "seed")].status == "to run" and "advbench" in steps[("refill", "seed")].basis
    assert steps[("train", "vanilla")].status == "rebuild" and steps[("interp", "interp-a0.5")].status == "cached"
    assert steps[("eval", "vanilla")].status == "cached" and steps[("interp", "interp-a0.25")].status == "to run"
    assert "rebuild" in describe(config, list(steps.values()))
    logs: list[str] = []
    run(config, log=logs.append)
    # the new interpolation scales vanilla's adapter: vanilla is trained again (its eval stays done);
    # the comparison with the seed reads the seed's AdvBench answers: generated again, same verdicts
    redone = [line for line in logs if line.startswith("[redo]")]
    assert len(redone) == 1 and "/train/vanilla-" in redone[0]
    assert any(line.startswith("[refill]") for line in logs)
    ran = [line for line in logs if line.startswith("[run ]")]
    assert any("interp-a0.25" in line for line in ran) and not any("interp-a0.5-" in line for line in ran)
    assert not any("/eval/vanilla-" in line or "/eval/seed-" in line for line in ran)
    seed_eval = next((run_dir / layout.EVAL).glob("seed-*"))
    refills = json.loads((seed_eval / REFILL_RECORD).read_text())["refills"]
    assert [r["tasks"] for r in refills] == [{"advbench": {"items": 2, "verdicts_changed": 0, "answers_changed": 0}}]
    assert refills[0]["generation"]["backend"] == "hf"
    rebuilt = json.loads(next((run_dir / layout.TRAIN).glob("vanilla-*/rebuilt.json")).read_text())
    assert "interp-a0.25 is built from it" in rebuilt["why"]
    assert layout.generations_file(seed_eval, "advbench").is_file()
    assert not layout.generations_file(seed_eval, "openfunctions").is_file()  # no comparison reads it


def test_archive_refuses_a_folder_that_is_not_a_run_or_would_be_overwritten(tmp_path):
    with pytest.raises(ConfigError, match="not a run folder"):
        archive(ArchiveConfig(run_dir=str(tmp_path), dest=str(tmp_path / "a")))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / layout.RUN_CONFIG).write_text("{}")
    with pytest.raises(ConfigError, match="outside the run folder"):
        archive(ArchiveConfig(run_dir=str(tmp_path / "run"), dest=str(tmp_path / "run" / "a")))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not an archive"):
        archive(ArchiveConfig(run_dir=str(tmp_path / "run"), dest=str(tmp_path / "other")))
    assert (tmp_path / "other" / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_a_comparison_pending_after_an_archive_makes_the_model_again_whole(archived, tmp_path, tiny_model):
    """A changed shift setting leaves every comparison pending while the models' answers are archived away:
    each model is trained and evaluated again (never a comparison of other weights' answers), and a second
    resume has nothing left to do."""
    _, run_dir, *_ = archived
    config = load_run_config(_config(tmp_path, tiny_model), ["shift.batch_size=4"])
    logs: list[str] = []
    run(config, log=logs.append)
    redone = [line for line in logs if line.startswith("[redo]")]
    assert sum("/train/vanilla-" in line for line in redone) == sum("/eval/vanilla-" in line for line in redone) == 1
    assert sum("/interp/interp-a0.5-" in line for line in redone) == 1
    rebuilt = json.loads(next((run_dir / layout.TRAIN).glob("vanilla-*/rebuilt.json")).read_text())
    assert rebuilt["archived_result"] and rebuilt["rebuilt_result"] and "evaluation" in rebuilt["why"]
    logs.clear()
    run(config, log=logs.append)
    assert not [line for line in logs if line.startswith(("[run ]", "[redo]", "[refill]"))]


@pytest.mark.slow
def test_a_training_archived_before_its_stage_was_marked_done_is_trained_again(archived):
    config, run_dir, *_ = archived
    vanilla = next((run_dir / layout.TRAIN).glob("vanilla-*"))
    stage = json.loads((vanilla / layout.STAGE).read_text())
    (vanilla / layout.STAGE).write_text(json.dumps({k: v for k, v in stage.items() if k != "result"}))
    shutil.rmtree(next((run_dir / layout.EVAL).glob("vanilla-*")))
    logs: list[str] = []
    run(config, log=logs.append)
    assert any(line.startswith("[run ]") and "/train/vanilla-" in line for line in logs)
    assert archive_module.has_weights(vanilla)


@pytest.mark.slow
def test_the_report_rebuilt_from_an_archive_keeps_every_section(archived):
    config, run_dir, out, *_ = archived
    written = (out / layout.REPORT_MD).read_text()  # by the run, from its answers
    rebuilt = Path(build_report(ReportConfig(run_dir=str(out)))["md"]).read_text()  # from the archive alone

    def section(text: str, heading: str) -> str:
        return text.split(heading)[1].split("\n## ")[0]
    for heading in ("## How answers open", "## Answer length", "## Cost per model"):
        assert heading in written and section(rebuilt, heading) == section(written, heading)


def test_archive_refuses_to_replace_a_run_folder_restored_from_an_archive(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "eval" / "seed-0" / layout.GENERATIONS).mkdir(parents=True)
    (run_dir / layout.RUN_CONFIG).write_text("{}")
    first = archive(ArchiveConfig(run_dir=str(run_dir), dest=str(tmp_path / "keep")))
    assert archive(ArchiveConfig(run_dir=str(run_dir), dest=first["out"]))["files"] == 1  # its own archive: replaced
    shutil.copytree(tmp_path / "keep", tmp_path / "restored")  # restored: archive.json names another folder
    with pytest.raises(ConfigError, match="not an archive made there"):
        archive(ArchiveConfig(run_dir=str(run_dir), dest=str(tmp_path / "restored")))
    (tmp_path / "keep" / "eval" / "seed-0" / layout.GENERATIONS).mkdir()  # a run went on in it
    with pytest.raises(ConfigError, match="a run folder, not replaced"):
        archive(ArchiveConfig(run_dir=str(run_dir), dest=str(tmp_path / "keep")))
    assert (tmp_path / "restored" / ARCHIVE_RECORD).is_file()


def test_archive_passes_over_temporary_files_and_tokenizers(tmp_path):
    run_dir = tmp_path / "run"
    model = run_dir / "train" / "vanilla-0"
    model.mkdir(parents=True)
    (run_dir / layout.RUN_CONFIG).write_text("{}")
    for name in ("stage.json", "train.json", "manifest.json.tmp", "tokenizer.json", "adapter_model.safetensors"):
        (model / name).write_text("x")
    archive(ArchiveConfig(run_dir=str(run_dir), dest=str(tmp_path / "keep")))
    assert sorted(p.name for p in (tmp_path / "keep" / "train" / "vanilla-0").iterdir()) == ["stage.json", "train.json"]
    left_out = json.loads((tmp_path / "keep" / ARCHIVE_RECORD).read_text())["left_out"]
    assert set(left_out) == {"train/vanilla-0/tokenizer.json", "train/vanilla-0/adapter_model.safetensors"}
