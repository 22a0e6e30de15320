"""sdft train resumes: after kill -9 and after a disk that filled while a checkpoint was written, the resumed
run ends with the weights of a run never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import QA, ROOT, config, write_json

from sdft.base.errors import ConfigError
from sdft.train import data as train_data
from sdft.train.stage import train


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "sdft", "train", *map(str, args)]


def test_resume_after_sigkill_gives_the_same_weights(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    data = write_json(tmp_path / "data.json",
                      [{"instruction": f"{q} ({i})", "input": "", "output": a} for i, (q, a) in enumerate(QA * 3)])
    # 12 examples, batch 2: 6 steps per epoch, 20 steps > 3 epochs, so the kill lands in a later epoch.
    settings = dict(max_steps=20, batch_size=2, learning_rate=1e-2, lr_scheduler="cosine", save_steps=2)
    flags = ["--model", tiny_model, "--data", data, "--max-steps", 20, "--batch-size", 2, "--grad-accum", 1,
             "--learning-rate", 1e-2, "--max-length", 256, "--save-steps", 2, "--logging-steps", 100]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*flags, "--out", killed), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        ckpt = train_data.last_checkpoint(killed / "checkpoints") if (killed / "checkpoints").is_dir() else None
        if ckpt is not None and int(ckpt.name.split("-")[1]) >= 8:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "train.json").exists(), "the run finished before it could be killed"

    # Rerunning without --resume must not clobber the checkpoints (refused before torch is even imported).
    refused = subprocess.run(_cli(*flags, "--out", killed), cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    with pytest.raises(ConfigError, match="differ"):  # resuming with other settings would mix two runs
        train(config(tiny_model, data, killed, **{**settings, "learning_rate": 1e-3}, resume=True))

    resumed = train(config(tiny_model, data, killed, **settings, resume=True))
    assert resumed["training"]["resumed_from"].startswith("checkpoint-")
    assert [p["step"] for p in resumed["loss"]] == list(range(1, 21))  # the curve spans both sessions
    straight = tmp_path / "straight"
    train(config(tiny_model, data, straight, **settings))
    a = load_file(killed / "adapter_model.safetensors")
    b = load_file(straight / "adapter_model.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a disk that can be filled: a 16 MiB tmpfs where we may mount one (root), else None."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                                                   check=False, capture_output=True).returncode == 0
    yield disk if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_disk_full_while_saving_a_checkpoint_is_one_line_and_resumes_identically(tiny_model, tmp_path, small_disk,
                                                                                 monkeypatch, capsys):
    """Issue 26, item 6: a disk that fills while a checkpoint is written was a traceback (torch's writer:
    "unexpected pos 64 vs 0"). One line; and resuming after it gives the same weights, byte for byte."""
    import errno

    import torch

    from sdft.cli import main

    data = write_json(tmp_path / "data.json", [{"instruction": q, "input": "", "output": a} for q, a in QA * 2])
    flags = ["--model", str(tiny_model), "--data", str(data), "--max-steps", "6", "--batch-size", "2", "--grad-accum",
             "1", "--max-length", "64", "--save-steps", "2", "--logging-steps", "100"]
    assert main(["train", *flags, "--out", str(tmp_path / "straight")]) == 0
    out = (small_disk or tmp_path) / "adapter"
    real_save = torch.save

    def save_on_a_full_disk(obj, path, *args, **kwargs):
        if str(path).endswith("checkpoint-4/optimizer.pt"):
            if small_disk is None:  # no tmpfs here: the error the kernel would give
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            _fill(small_disk / "filler")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    assert main(["train", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sdft train: error: ") and ("disk full" in err or "a file write failed" in err), err
    monkeypatch.setattr(torch, "save", real_save)
    if small_disk is not None:
        (small_disk / "filler").unlink()
    assert main(["train", *flags, "--resume", "--out", str(out)]) == 0
    assert "resuming from checkpoint-2" in capsys.readouterr().out
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "straight" / "adapter_model.safetensors").read_bytes()


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                continue
