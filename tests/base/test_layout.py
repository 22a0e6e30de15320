"""The run-folder contract: old run folders keep rebuilding the same report."""

import json
import shutil
from pathlib import Path

import pytest

import sdft
from sdft.base import layout
from sdft.base.errors import ConfigError
from sdft.base.layout import Arm, Manifest
from sdft.report.config import ReportConfig
from sdft.report.stage import build_report

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run-v0.1"


def test_report_from_a_run_folder_of_the_previous_version(tmp_path):
    """Written before the contract, by a run started elsewhere (stage dirs relative to another cwd): the
    rebuilt report is the expected one, loss plot included (report.md: the old code's report, updated only
    where a later version added a section or changed a caption)."""
    run_dir = tmp_path / "moved" / "fixture"
    shutil.copytree(FIXTURE, run_dir)
    expected = (run_dir / "report.md").read_text()
    (run_dir / "report.md").unlink()
    paths = build_report(ReportConfig(run_dir=str(run_dir)))
    assert Path(paths["md"]).read_text() == expected
    assert {p.name for p in (run_dir / "plots").iterdir()} >= {"loss.png", "mix_ratio.png", "sample_size.png"}


def test_old_manifest_maps_onto_named_arms():
    manifest = Manifest.read(FIXTURE)
    assert list(manifest.arms) == ["seed", "vanilla", "mix0.5", "sdft", "vanilla-n2", "sdft-n2"]
    seed, sdft = manifest.seed, manifest.arms["sdft"]
    assert seed.recipe == "seed" and not seed.trained and seed.answer_shift is None
    assert sdft.recipe == "mix" and sdft.mix_ratio == 1.0 and sdft.sample_size is None
    assert sdft.answer_shift["overall"]["bleu4"]["mean"] == 1.0 and sdft.weight_shift["total"] > 0
    assert manifest.arms["sdft-n2"].sample_size == 2
    assert sdft.metrics()["openfunctions/accuracy"].n == 4
    assert manifest.distill.result["accepted"] == 2


def test_manifest_round_trips_any_number_of_named_arms(tmp_path):
    manifest = Manifest.read(FIXTURE)
    vanilla = manifest.arms["vanilla"]
    # An arm of another recipe, with its own parameters, next to the mix arms.
    manifest.arms["replay-0.2"] = Arm("replay-0.2", "replay", vanilla.eval, params={"replay_share": 0.2},
                                      train=vanilla.train)
    manifest.write(tmp_path)
    again = Manifest.read(tmp_path)
    assert again == manifest
    assert json.loads((tmp_path / layout.MANIFEST).read_text())["schema"] == layout.SCHEMA
    assert again.arms["replay-0.2"].mix_ratio is None and again.arms["replay-0.2"].params == {"replay_share": 0.2}


def test_locate_finds_stage_folders_of_a_moved_run(tmp_path):
    run_dir = tmp_path / "elsewhere"
    (run_dir / "eval" / "sdft-abc" / layout.COMPARE).mkdir(parents=True)
    assert layout.locate(run_dir, "runs/x/eval/sdft-abc") == run_dir / "eval" / "sdft-abc"
    assert layout.locate(run_dir, "/gone/x/eval/sdft-abc/compare") == run_dir / "eval" / "sdft-abc" / "compare"
    assert layout.locate(run_dir, str(run_dir / "eval")) == run_dir / "eval"  # still where it was: as stored


def test_locate_reads_a_copied_run_even_while_the_original_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x" / "eval" / "sdft-abc").mkdir(parents=True)  # the original, where it was run
    copy = tmp_path / "copy" / "x"
    (copy / "eval" / "sdft-abc").mkdir(parents=True)
    assert layout.locate(copy, "runs/x/eval/sdft-abc") == copy / "eval" / "sdft-abc"
    assert layout.locate(tmp_path / "runs" / "x", "runs/x/eval/sdft-abc") == tmp_path / "runs/x/eval/sdft-abc"
    outside = tmp_path / "adapters" / "mine"
    outside.mkdir(parents=True)
    assert layout.locate(copy, str(outside)) == outside  # not a stage of the run: as stored


def test_stage_folder_belongs_to_one_key(tmp_path):
    layout.claim_stage(tmp_path, "k1", {"max_new_tokens": 8, "seed": 1})
    layout.claim_stage(tmp_path, "k1", {"max_new_tokens": 8, "seed": 1})  # same key: resumes
    with pytest.raises(ConfigError, match="differ: max_new_tokens"):
        layout.claim_stage(tmp_path, "k2", {"max_new_tokens": 9, "seed": 1})
    assert layout.finished_result(tmp_path, "k1") is None
    layout.finish_stage(tmp_path, "k1", {"max_new_tokens": 8, "seed": 1}, {"done": True})
    assert layout.finished_result(tmp_path, "k1") == {"done": True}
    assert layout.finished_result(tmp_path, "k2") is None
    layout.claim_stage(tmp_path, "k2", {"max_new_tokens": 9, "seed": 1}, overwrite=True)
    assert layout.read_stage(tmp_path)["key"] == "k2"


def test_a_stage_record_older_than_keys_resumes(tmp_path):
    """stage.json written before stages had keys (run-v0.1) names no key: continued, never refused."""
    (tmp_path / layout.STAGE).write_text(json.dumps({"settings": {"max_new_tokens": 8}}))
    layout.claim_stage(tmp_path, "k1", {"max_new_tokens": 8})
    assert layout.read_stage(tmp_path)["key"] == "k1"


def test_plots_read_the_layout_not_the_report():
    """The report uses the plots; the plots read saved results through sdft.base.layout only (no import cycle)."""
    import ast

    tree = ast.parse((Path(sdft.__file__).parent / "report" / "plots.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names} | \
               {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {"report", "sdft.report.stage"} & imported


@pytest.mark.parametrize("damage", [b'{"name": "fixture", "models": {', b"[]", b'{"name": 3}', b"\xff\xfe{}",
                                    b'{"name": "x", "model": "m", "data": "d", "task": "t", "models": {"seed": 3}}'])
def test_a_damaged_manifest_is_one_line_naming_it(tmp_path, capsys, damage):
    """Issue 26, item 6: `sdft report` on a corrupted manifest.json was a traceback."""
    from sdft.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    (run_dir / layout.MANIFEST).write_bytes(damage)
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sdft report: error: {run_dir / layout.MANIFEST}") and "\n" not in err
    assert "damaged, not a manifest sdft can read (" in err
