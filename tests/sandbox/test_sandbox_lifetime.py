"""Sandboxed programs die with sdft, and leave nothing behind (issue 15, item 2).

``sdft eval`` scores HumanEval answers that sleep; once they run, sdft is killed outright (SIGKILL:
no clean-up code of its own runs) or interrupted (SIGINT); then no sandboxed process, sandbox host
or cgroup may remain. (The programs' folder is a tmpfs of their mount namespace: no host folder exists
to leak, see test_sandbox.py::test_temp_dir_is_private_and_leaves_nothing.)
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdft import sandbox
from sdft.generation.fake import FakeBackend
from sdft.sandbox.cgroup import Cgroup
from sdft.sandbox.host import UID_BASE, UID_SPAN

ROOT = Path(__file__).resolve().parents[2]
ISO = sandbox.isolation() if sys.platform == "linux" else None
pytestmark = [pytest.mark.slow, pytest.mark.skipif(ISO is None or not ISO.complete, reason="no complete sandbox here")]


class SleepingCodeBackend(FakeBackend):
    """TEST DOUBLE: every HumanEval answer is a body that sleeps for two minutes."""

    def __init__(self, model=None, adapter=None, **options):
        super().__init__(model, adapter, respond=lambda prompt: "    import time\n    time.sleep(120)\n",
                         progress=False)


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (uid, parent pid, command line) for every process."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry.name)] = (int(status["Uid"].split()[0]), int(status["PPid"]), cmdline)
    return found


def _sandboxed(processes, role: str | None = None) -> list[int]:
    """Processes of the sandbox uids (``role``: only the tests' or the program's processes of check_program)."""
    return [pid for pid, (uid, _, cmd) in processes.items() if UID_BASE <= uid <= UID_BASE + 2 * UID_SPAN + 1
            and (role is None or cmd.split()[-1:] == [role])]


def _age_s(pid: int) -> float:
    try:
        started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0.0
    return float(Path("/proc/uptime").read_text().split()[0]) - started / os.sysconf("SC_CLK_TCK")


def _leftovers(hosts: list[int]) -> list[str]:
    processes = _processes()
    left = [f"sandboxed process {pid}" for pid in _sandboxed(processes)]
    left += [f"sandbox host {pid}" for pid in hosts if pid in processes]
    for parent, _ in Cgroup._parents():
        left += [str(d) for pid in hosts for d in parent.glob(f"{Cgroup.PREFIX}{pid}-*")]
    return left


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_killing_sdft_eval_mid_scoring_leaves_nothing(tmp_path, how):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests" / "sandbox"),
                                                                   os.environ.get("PYTHONPATH")]))}
    log = tmp_path / "eval.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sdft", "eval", "--backend", "test_sandbox_lifetime:SleepingCodeBackend",
                                 "--model", "fake-model", "--tasks", "humaneval", "--limit", "4",
                                 "--option", "humaneval.timeout=120", "--out", str(tmp_path / "eval"), "--no-progress"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        # Scoring has started: a tests' process that has waited on its program for a while (the start-up
        # probe also starts one, for a moment).
        while not [pid for pid in _sandboxed(_processes(), "harness") if _age_s(pid) > 3]:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(0.5)  # let the scoring threads start their other sandboxes too
        hosts = [pid for pid, (_, ppid, cmd) in _processes().items() if ppid == proc.pid and "sandbox/host.py" in cmd]
        assert hosts and _sandboxed(_processes())
        proc.send_signal(how)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 15
    while _leftovers(hosts) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _leftovers(hosts) == []


@pytest.mark.skipif(ISO is None or "cgroup" not in ISO, reason="no writable cgroup tree here")
def test_cgroups_of_hosts_killed_outright_are_swept():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [parent / f"{Cgroup.PREFIX}{dead.stdout.strip()}-0" for parent, _ in Cgroup._parents()]
    for directory in stale:
        directory.mkdir()
    try:
        assert sandbox.run_python("pass").passed  # each run's host sweeps first
        assert not [d for d in stale if d.exists()]
    finally:
        for directory in stale:
            if directory.exists():
                directory.rmdir()


@pytest.mark.skipif(ISO is None or "cgroup" not in ISO, reason="no writable cgroup tree here")
def test_a_sandbox_host_killed_outright_leaves_no_cgroup():
    """Issue 26, item 6: kill -9 of one sandbox host left its two cgroups (pids, memory) until the next run."""
    import threading

    outcome = {}
    run = threading.Thread(target=lambda: outcome.setdefault("r", sandbox.run_python("import time\ntime.sleep(60)")))
    before = set(_processes())
    run.start()
    deadline = time.monotonic() + 60
    while not (hosts := [pid for pid, (_, ppid, cmd) in _processes().items()
                         if pid not in before and ppid == os.getpid() and "sandbox/host.py" in cmd]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    while not [d for parent, _ in Cgroup._parents() for d in parent.glob(f"{Cgroup.PREFIX}{hosts[0]}-*")]:
        assert time.monotonic() < deadline  # the host has made its cgroups
        time.sleep(0.05)
    os.kill(hosts[0], signal.SIGKILL)
    run.join(timeout=60)
    assert outcome["r"].status == "error"
    assert _leftovers(hosts) == []  # at once: no later run's sweep
