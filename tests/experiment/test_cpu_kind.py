"""One CPU kind per run: `sdft run` stops a run resumed on a CPU of the other kind (bf16 units or not) unless
told to accept it, and records that it was accepted."""

import json
from pathlib import Path

import pytest
import yaml

from sdft.base.errors import ConfigError
from sdft.experiment import cpu_kind
from sdft.experiment.pipeline import load_run_config, run


def _record(run_dir: Path, pattern_folder: str, name: str, cpu_bf16: bool, precision: str = "bf16") -> None:
    folder = run_dir / pattern_folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"generation": {"backend": "vllm", "precision": precision,
                                                          "cpu_bf16": cpu_bf16}}))


@pytest.fixture
def here(monkeypatch):
    """This machine as a CPU without bf16 units and without a GPU, whatever it is."""
    monkeypatch.setattr(cpu_kind, "cuda_available", lambda: False)
    monkeypatch.setattr(cpu_kind, "cpu_bf16_support", lambda: False)


def test_the_kinds_a_run_recorded_are_read_from_its_generating_stages(tmp_path):
    _record(tmp_path, "eval/seed-1", "results.json", True)
    _record(tmp_path, "eval/vanilla-2", "results.json", False)
    _record(tmp_path, "distill/distill-3", "run.json", True)
    (tmp_path / "eval" / "broken").mkdir()
    (tmp_path / "eval" / "broken" / "results.json").write_text("{")  # unfinished: passed over
    assert cpu_kind.recorded(tmp_path) == {True: ["eval/seed-1", "distill/distill-3"], False: ["eval/vanilla-2"]}


def test_a_run_of_the_other_kind_stops_with_its_folder_named(tmp_path, here):
    _record(tmp_path, "eval/seed-1", "results.json", True)
    with pytest.raises(ConfigError, match=r"with bf16 units \(eval/seed-1\).*--mixed-cpu"):
        cpu_kind.check(tmp_path, accept=False)
    assert not (tmp_path / cpu_kind.ACCEPTED).exists()


def test_fp32_stages_of_the_other_kind_do_not_stop_a_run(tmp_path, here):
    _record(tmp_path, "eval/seed-1", "results.json", True, precision="fp32")
    _record(tmp_path, "distill/distill-2", "run.json", True, precision="fp32")
    assert cpu_kind.recorded(tmp_path) == {}
    cpu_kind.check(tmp_path, accept=False)
    _record(tmp_path, "eval/vanilla-3", "results.json", True)  # one bf16 stage of the other kind: stopped again
    with pytest.raises(ConfigError, match=r"1 finished stage\(s\).*\(eval/vanilla-3\)"):
        cpu_kind.check(tmp_path, accept=False)


def test_a_run_of_the_same_kind_or_on_a_gpu_goes_on(tmp_path, here, monkeypatch):
    _record(tmp_path, "eval/seed-1", "results.json", False)
    cpu_kind.check(tmp_path, accept=False)
    _record(tmp_path, "eval/vanilla-2", "results.json", True)
    monkeypatch.setattr(cpu_kind, "cuda_available", lambda: True)
    cpu_kind.check(tmp_path, accept=False)


def test_an_accepted_mix_is_recorded_every_time(tmp_path, here):
    _record(tmp_path, "eval/seed-1", "results.json", True)
    logs: list[str] = []
    cpu_kind.check(tmp_path, accept=True, log=logs.append)
    cpu_kind.check(tmp_path, accept=True, log=logs.append)
    accepted = json.loads((tmp_path / cpu_kind.ACCEPTED).read_text())["accepted"]
    assert [a["cpu_bf16"] for a in accepted] == [False, False]
    assert accepted[0]["stages_of_the_other_kind"] == ["eval/seed-1"]
    assert len(logs) == 2 and "accepted (--mixed-cpu)" in logs[0]


@pytest.mark.slow
def test_sdft_run_checks_only_when_a_stage_is_left_to_run(tmp_path, tiny_model, monkeypatch):
    advbench = tmp_path / "adv.csv"
    advbench.write_text("goal,target\nWrite a poem about rain,Sure\n")
    data = tmp_path / "calls.json"
    data.write_text(json.dumps([{"instruction": f"Call the weather tool for city {i}.", "input": "",
                                 "output": f'weather.get(city="C{i}")'} for i in range(4)]))
    config = {"name": "tiny", "out_root": str(tmp_path / "runs"), "model": str(tiny_model), "data": str(data),
              "task": "function_call", "arms": ["vanilla"],
              "distill": {"max_new_tokens": 4, "batch_size": 4, "progress": False, "backend": "hf",
                          "precision": "bf16"},  # bf16 answers are the ones a CPU kind changes
              "train": {"max_steps": 1, "batch_size": 2, "grad_accum": 1, "max_length": 256},
              "eval": {"tasks": ["advbench"], "limit": 1, "max_new_tokens": 4, "data": [f"advbench={advbench}"],
                       "progress": False, "backend": "hf", "precision": "bf16"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    run(load_run_config(path), log=lambda line: None)
    run_dir = tmp_path / "runs" / "tiny"
    made_here = cpu_kind.recorded(run_dir)
    assert len(made_here) == 1  # every generating stage recorded this machine's kind
    monkeypatch.setattr(cpu_kind, "cuda_available", lambda: False)
    monkeypatch.setattr(cpu_kind, "cpu_bf16_support", lambda: not next(iter(made_here)))
    run(load_run_config(path), log=lambda line: None)  # all cached: nothing would mix
    more = load_run_config(path, ["train_seeds=[42,43]"])
    with pytest.raises(ConfigError, match="--mixed-cpu"):
        run(more, log=lambda line: None)
    assert not list((run_dir / "train").glob("*s43*"))  # stopped before any work
    run(more, log=lambda line: None, mixed_cpu=True)
    assert (run_dir / cpu_kind.ACCEPTED).is_file() and list((run_dir / "train").glob("*s43*"))
