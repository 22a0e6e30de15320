"""The run-folder contract: old run folders keep rebuilding the same report."""

import shutil
from pathlib import Path

from sdft.report import ReportConfig, build_report

FIXTURE = Path(__file__).parent / "fixtures" / "run-v0.1"


def test_report_from_a_run_folder_of_the_previous_version(tmp_path):
    """Written before the contract, by a run started elsewhere (stage dirs relative to another cwd): the
    rebuilt report is the report the old code wrote, loss plot included."""
    run_dir = tmp_path / "moved" / "fixture"
    shutil.copytree(FIXTURE, run_dir)
    expected = (run_dir / "report.md").read_text()
    (run_dir / "report.md").unlink()
    paths = build_report(ReportConfig(run_dir=str(run_dir)))
    assert Path(paths["md"]).read_text() == expected
    assert {p.name for p in (run_dir / "plots").iterdir()} >= {"loss.png", "mix_ratio.png", "sample_size.png"}
