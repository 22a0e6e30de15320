"""Run folders: one writer at a time (the second says who holds it), ``--out`` checked before any model
loads, disk full as one line that loses nothing, and Ctrl-C that tells the truth about what was saved."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdft.base import runlock
from sdft.base.errors import SdftError
from sdft.cli import main

HOLDER = ("import sys; from sdft.base import runlock\n"
          "with runlock.claim(sys.argv[1], 'sdft train --out held'):\n"
          "    print('held', flush=True); sys.stdin.read()\n")


def hold(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_and_told_who_holds_the_folder(tmp_path):
    folder = tmp_path / "run"
    holder = hold(folder)
    try:
        with pytest.raises(SdftError) as info:
            with runlock.claim(folder):
                pass
        message = str(info.value)
        assert f"pid {holder.pid} on " in message and "(command: sdft train --out held)" in message
        assert "wait for it to finish, or use another --out" in message
    finally:
        holder.kill()  # kill -9: the kernel drops the lock, nothing stale is left behind
        holder.wait()
    with runlock.claim(folder):
        with runlock.claim(folder):  # re-entrant within one process (a pipeline and its stages)
            pass


def test_cli_refuses_a_held_folder_before_any_work(tmp_path, capsys):
    folder = tmp_path / "eval"
    holder = hold(folder)
    try:
        assert main(["eval", "--tasks", "gsm8k", "--model", "no-such-model", "--out", str(folder)]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err.startswith(f"sdft eval: error: {folder} is in use by pid {holder.pid}")
    assert len(err.strip().splitlines()) == 1


def test_out_must_be_a_writable_folder(tmp_path, capsys):
    afile = tmp_path / "results.json"
    afile.write_text("{}")
    # --model does not exist: reaching model loading would give another error, so these come first.
    assert main(["eval", "--tasks", "gsm8k", "--model", "no-such-model", "--out", str(afile)]) == 2
    assert capsys.readouterr().err.strip() == (f"sdft eval: error: --out {afile} is an existing file, not a "
                                               "folder; choose a folder path")
    if os.geteuid() == 0:  # root ignores permission bits: use a read-only file system instead
        read_only, cannot_create = Path("/sys/kernel"), Path("/sys/kernel/sdft-test-out")
    else:
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o555)
        cannot_create = read_only / "sub"
    assert main(["eval", "--tasks", "gsm8k", "--model", "no-such-model", "--out", str(read_only)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sdft eval: error: --out {read_only}: cannot write in the folder (") and "\n" not in err
    assert main(["train", "--data", "d.jsonl", "--out", str(cannot_create)]) == 2
    assert f"--out {cannot_create}: cannot create the folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["distill", "train", "eval"])
def test_a_file_name_too_long_is_one_line(tmp_path, capsys, command):
    """Issue 26, item 6: a name over 255 bytes (the file system's limit) was a traceback."""
    long = tmp_path / ("x" * 300)
    argv = {"distill": ["distill", "--data", f"{long}.jsonl", "--model", "no-such-model", "--out", str(tmp_path / "d")],
            "train": ["train", "--data", str(tmp_path / "d.jsonl"), "--out", str(long / "adapter")],
            "eval": ["eval", "--tasks", "gsm8k", "--model", "no-such-model", "--out", str(long)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sdft {command}: error: file name too long: '{str(tmp_path)[:20]}") and "\n" not in err
    assert err.endswith(("(a name of 300 bytes; the file system allows 255)",
                         "(a name of 306 bytes; the file system allows 255)")), err


def test_disk_full_is_one_line_and_loses_nothing(tiny_model, tmp_path, capsys):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(3)))
    out = tmp_path / "eval"
    out.mkdir()
    # The kernel's own ENOSPC: every write to /dev/full fails with "No space left on device".
    (out / "results.json.tmp").symlink_to("/dev/full")
    argv = ["eval", "--model", str(tiny_model), "--tasks", "gsm8k", "--data", f"gsm8k={gsm}",
            "--max-new-tokens", "4", "--no-progress", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model-loading progress bar
    assert err == ("sdft eval: error: disk full; work finished so far is saved: fix this and rerun the same "
                   "command to resume")
    (cached,) = (out / "generations" / ".cache").glob("gsm8k-*.jsonl")
    assert len(cached.read_text().splitlines()) == 3  # every answer was kept
    (out / "results.json.tmp").unlink()
    before = cached.read_bytes()
    assert main(argv) == 0
    assert cached.read_bytes() == before  # nothing generated again
    assert json.loads((out / "results.json").read_text())["tasks"]["gsm8k"]["n"] == 3


@pytest.mark.slow
def test_ctrl_c_before_the_first_checkpoint_does_not_claim_progress(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(8)))
    out = tmp_path / "adapter"
    proc = subprocess.Popen([sys.executable, "-m", "sdft", "train", "--model", str(tiny_model), "--data", str(data),
                             "--max-steps", "100000", "--save-steps", "100000", "--batch-size", "2", "--grad-accum",
                             "1", "--max-length", "64", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "sdft-run.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(2)  # inside the training loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "no checkpoint had been written yet" in err and "nothing of this training was saved" in err
    assert "progress is saved" not in err
