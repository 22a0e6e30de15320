"""Distillation stage: outputs, provenance, resume after SIGKILL, and user-facing errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdft.distill.config import DistillConfig
from sdft.distill.stage import distill

ROOT = Path(__file__).resolve().parents[2]


def _write_math(path: Path, n: int) -> Path:
    rows = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
             "answer": f"He has {i} + {i + 2} = {2 * i + 2} apples.\nThe answer is {2 * i + 2}."}
            for i in range(n)]
    path.write_text(json.dumps(rows))
    return path


class AppleRewriterDouble:
    """Test double backend: rewrites correctly for an even number of apples, wrongly for odd."""

    tokenizer = model = None  # declared like a real backend: no chat template, no torch module

    def __init__(self, model, adapter=None, progress=True):
        pass

    def generate(self, prompts, params):
        from sdft.generation import Completion
        out = []
        for prompt in prompts:
            i = int(prompt.split("Tom has ")[1].split(" ")[0])
            total = 2 * i + 2 if i % 2 == 0 else 0
            out.append(Completion(f"Adding gives {total}. The answer is {total}.", 10, 8, "stop"))
        return out


def _fake_config(tmp_path, data, **kw) -> DistillConfig:
    return DistillConfig(data=str(data), out=str(tmp_path / "out"), model="double",
                         backend="test_distill:AppleRewriterDouble", task="math", progress=False, **kw)


def test_sample_seed_distills_a_seeded_subset_keyed_only_when_set(tmp_path):
    from sdft.base.config import keyed_settings
    from sdft.base.data import seeded_subset
    from sdft.base.errors import ConfigError

    data = _write_math(tmp_path / "math.json", 12)
    stats = distill(_fake_config(tmp_path, data, limit=4, sample_seed=7))
    questions = [json.loads(line)["question"] for line in (tmp_path / "out" / "distilled.jsonl").open()]
    rows = json.loads(data.read_text())
    # The same subset as `sdft train --limit 4 --seed 7` would take from this file, in file order.
    assert questions == [r["question"] for r in seeded_subset(rows, 4, 7)] != [r["question"] for r in rows[:4]]
    assert stats["examples"] == 4
    assert json.loads((tmp_path / "out" / "run.json").read_text())["sample_seed"] == 7
    # Unset, it stays out of the stage key: runs made before the setting existed keep their cached stages.
    assert "sample_seed" not in keyed_settings(_fake_config(tmp_path, data, limit=4))
    assert keyed_settings(_fake_config(tmp_path, data, limit=4, sample_seed=7))["sample_seed"] == 7
    with pytest.raises(ConfigError, match="set 'limit' too"):
        _fake_config(tmp_path, data, sample_seed=7)


def test_distill_writes_outputs_in_input_order(tmp_path):
    data = _write_math(tmp_path / "math.json", 4)
    stats = distill(_fake_config(tmp_path, data))
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "distilled.jsonl").read_text().splitlines()]
    assert [r["question"] for r in records] == [r["question"] for r in json.loads(data.read_text())]
    assert [r["sdft"]["accepted"] for r in records] == [True, False, True, False]
    assert records[0]["answer"] == records[0]["sdft"]["rewrite"]
    assert records[1]["answer"] == records[1]["sdft"]["original"]
    assert stats["accepted"] == 2 and stats["reasons"]["accepted"] == 2
    run = json.loads((out / "run.json").read_text())
    assert run["template"]["name"] == "math" and run["decoding"]["temperature"] == 0.0
    assert run["data"]["sha256"] and "torch" in run["versions"]


def test_other_settings_refuse_to_resume(tmp_path):
    data = _write_math(tmp_path / "math.json", 2)
    distill(_fake_config(tmp_path, data))
    from sdft.base.errors import ConfigError
    with pytest.raises(ConfigError, match="different settings"):
        distill(_fake_config(tmp_path, data, max_new_tokens=7))
    with pytest.raises(ConfigError, match="different settings"):
        distill(_fake_config(tmp_path, data, system_prompt="none"))


def test_system_prompt_is_applied_and_recorded(tmp_path):
    data = _write_math(tmp_path / "math.json", 2)
    distill(_fake_config(tmp_path, data, system_prompt="Be exact."))
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["system_prompt"] == {"choice": "Be exact.", "mode": "plain", "text": "Be exact."}
    # Plain Llama-2 layout: the custom text in <<SYS>>, the paper's math instruction kept in the user turn.
    assert run["config"]["system_prompt"] == "Be exact."
    from sdft.base import templates
    prompt = templates.render(templates.DISTILL_TEMPLATES["math"], "Q?", reference="A", system_prompt="Be exact.")
    assert prompt.startswith("[INST] <<SYS>>\nBe exact.\n<</SYS>>\n\nYou are an expert in math.")


def test_progress_without_a_stage_key_is_not_mixed_in(tmp_path):
    data = _write_math(tmp_path / "math.json", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "progress.jsonl").write_text('{"id": "old"}\n')  # left by a version before stage keys
    from sdft.base.errors import ConfigError
    with pytest.raises(ConfigError, match="without a stage key"):
        distill(_fake_config(tmp_path, data))


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sdft", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, **kw)


def test_broken_jsonl_line_3_is_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{"instruction": \n')
    result = _cli("distill", "--data", str(bad), "--out", str(tmp_path / "o"), "--model", "fake",
                  "--backend", "fake")
    assert result.returncode == 2
    assert "bad.jsonl" in result.stderr and "line 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: x.json\nbatch_sise: 4\n")
    result = _cli("distill", "--config", str(cfg))
    assert result.returncode == 2 and "batch_sise" in result.stderr


class TerminatedInSecondBatch(AppleRewriterDouble):
    """Test double: the job gets SIGTERM (``kill PID``, ``timeout``, a scheduler) during its second batch."""

    batches = 0

    def generate(self, prompts, params):
        TerminatedInSecondBatch.batches += 1
        if TerminatedInSecondBatch.batches == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler interrupts this
        return super().generate(prompts, params)


def test_sigterm_stops_cleanly_keeps_progress_and_says_so_in_one_line(tmp_path):
    """Python's default for SIGTERM ends the process without any clean-up (vLLM engines were left running)."""
    data = _write_math(tmp_path / "math.json", 8)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests" / "distill"),
                                                                   os.environ.get("PYTHONPATH")]))}
    result = _cli("distill", "--data", str(data), "--out", str(tmp_path / "out"), "--model", "double", "--backend",
                  "test_distill:TerminatedInSecondBatch", "--task", "math", "--batch-size", "2", "--no-progress",
                  env=env)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr.split() == ("sdft distill: terminated (SIGTERM); progress is saved, rerun the same "
                                     "command to resume.").split()
    assert len((tmp_path / "out" / "progress.jsonl").read_text().splitlines()) == 2  # the first batch


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tiny_model):
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say the number {i} in words.", "input": "",
                                        "output": f"The number is {i}."}) + "\n" for i in range(12)))
    common = ["distill", "--data", str(data), "--model", str(tiny_model), "--batch-size", "2",
              "--max-new-tokens", "24", "--no-progress", "--backend", "hf"]
    reference = _cli(*common, "--out", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sdft", *common, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / "progress.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if progress.exists() and len(progress.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "distilled.jsonl").exists(), "killed too late to test resuming"

    resumed = _cli(*common, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    lines = (out / "distilled.jsonl").read_text().splitlines()
    assert len(lines) == 12 and len({json.loads(x)["sdft"]["id"] for x in lines}) == 12
    assert lines == (tmp_path / "ref" / "distilled.jsonl").read_text().splitlines()


@pytest.mark.slow
def test_embedded_model_distills_gsm8k(tmp_path, shared_data):
    out = tmp_path / "D"
    done = _cli("distill", "--model", "smollm2-135m-instruct", "--data", str(shared_data / "gsm8k_train.json"),
                "--task", "math", "--limit", "3", "--batch-size", "3", "--max-new-tokens", "24",
                "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(x) for x in (out / "distilled.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["sdft"]["rewrite"] for r in records)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["examples"] == 3 and sum(stats["reasons"].values()) == 3
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["source"]["sha256"] and run["template"]["assistant_prefix"].startswith("Great!")
