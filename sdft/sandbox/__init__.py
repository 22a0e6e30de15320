"""Run untrusted Python (model-written code and its tests) where it can harm nothing and forge nothing.

Each :func:`run_python` / :func:`check_program` call starts a sandbox host (:mod:`sdft.sandbox.host`,
a separate interpreter) that builds, for this one run:

* new mount, PID, network, IPC and UTS namespaces (as root directly; otherwise inside a user namespace);
* a private root: the system and Python folders bound read-only, nosuid, nodev; a minimal ``/dev``;
  a size-capped tmpfs ``/tmp`` that is the program's home and working folder (the only writable place);
  a fresh ``/proc`` with ``hidepid=invisible`` (the parent, sdft and its environment do not exist
  there); then chroot;
* an unprivileged uid of its own (as root; a user namespace's mapped uid otherwise), no groups, every
  capability dropped (bounding and ambient sets too), ``no_new_privs``;
* a seccomp filter (libseccomp through ``pyseccomp``) refusing mount, ptrace, setns/unshare, mknod,
  chown, sethostname, keyctl, bpf, io_uring, real-time scheduling, non-unix sockets, terminal-injecting
  and immutable-flag ioctls, among others (:data:`sdft.sandbox.kernel.DENIED_SYSCALLS`);
* Landlock (writes only in ``/tmp``, no TCP, scoped signals) and a throw-away cgroup (process and
  memory caps, kill-all) where the kernel has them; without a memory cgroup, init watches the memory
  of all the run's processes together; rlimits (address space, CPU, file size, open files, processes,
  no real-time priority) always;
* an environment of PATH, HOME, TMPDIR and LC_ALL only, and an audit hook refusing Python sockets.

The program's exit status, wall and CPU time are read by the host from the kernel (``wait4``) and
come back on a pipe the program cannot reach; its output is only captured. :func:`check_program` runs
the tests in a second process (another uid as root) that the program cannot see, the program being in a
PID namespace of its own, and passes only plain data between them
(:mod:`sdft.sandbox.guest`), so the verdict cannot be forged from inside (an object whose ``__eq__``
is always True, a printed "pass" marker, ``exit(0)``, patching the test code...).

Lifetime: the host dies with sdft (parent-death signal), the namespace's init with the host, and every
process of a PID namespace with its init; the tmpfs goes with the namespace and the host removes the
cgroup (sdft removes those of a host killed outright; the next run sweeps those of a killed sdft).

Fail closed: if this kernel refuses any of namespaces, private root, fresh /proc, unprivileged uid,
seccomp or (check_program) the program's own PID namespace, untrusted code is not run (:func:`require`
raises; a run returns ``error``) unless the user opts out with ``SDFT_SANDBOX=permissive``, which
applies whatever works (never root on the host's files; Landlock limits reads where no private root
hides them). No message advises the opt-out. :func:`record` says which mechanisms were active and why
the others were not; it goes into the run records. Linux only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from sdft.base.errors import ConfigError, SdftError
from sdft.sandbox.cgroup import Cgroup
from sdft.sandbox.kernel import SYSTEM_PATHS, python_paths
from sdft.sandbox.verdict import Output, classify, collect

__all__ = ["SandboxResult", "run_python", "check_program", "isolation", "require", "record", "stop_all", "resume"]

ENV_MODE = "SDFT_SANDBOX"
MODES = ("strict", "permissive")
# Strict mode needs all; separate_tests only where there are tests (check_program).
REQUIRED = ("namespaces", "private_root", "fresh_proc", "unprivileged", "seccomp", "separate_tests", "memory_total")
_HOST, _GUEST = Path(__file__).with_name("host.py"), Path(__file__).with_name("guest.py")
_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LC_ALL": "C.UTF-8"}
_HOST_GRACE_S = 20  # past the program's deadline, the host has this long to clean up and report

Status = Literal["passed", "failed", "timeout", "error"]


@dataclass
class SandboxResult:
    """``passed``: exit status 0 (check_program: the tests' process exited 0). ``failed``: the program
    ended with another status on its own (an exception, a failed assert, a syntax error). ``timeout``:
    wall-clock or CPU limit reached. ``error``: anything abnormal: out of memory, killed by a signal,
    output flood, or the sandbox could not (or would not) be set up. ``detail`` says which. Times are
    the sandbox host's measurements of the program (tests' process for check_program)."""

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    detail: str = ""
    cpu_s: float | None = None
    mechanisms: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    """What the sandbox could apply on this machine, probed once per process."""

    active: frozenset[str]
    missing: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(m in self.active for m in REQUIRED)

    def __contains__(self, mechanism: str) -> bool:
        return mechanism in self.active


def mode() -> str:
    value = os.environ.get(ENV_MODE, "strict").strip().lower() or "strict"
    if value not in MODES:
        raise ConfigError(f"{ENV_MODE}={value!r}: use one of {', '.join(MODES)}")
    return value


@lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe (a trivial program in a permissive sandbox) which mechanisms this machine allows."""
    if sys.platform != "linux":
        return Isolation(frozenset(), {"all": "the sandbox needs Linux"})
    harness = json.dumps({"tests": "assert f() == 1", "entry_point": None, "context": ""})
    outcome = _launch(_spec("def f():\n    return 1\n", [{"name": "server"}, {"name": "harness", "stdin": harness}],
                            timeout_s=30, memory_mb=256, max_file_mb=1, python=None, strict=False), 30, 4096)
    return Isolation(frozenset(outcome.mechanisms), outcome.missing)


def require() -> None:
    """Refuse (SdftError) to go on when untrusted code could not be contained here, unless opted out."""
    if mode() == "permissive":
        return
    iso = isolation()
    if not iso.complete:
        lacking = {m: iso.missing.get(m, "not applied") for m in REQUIRED if m not in iso}
        raise SdftError("the sandbox cannot contain untrusted code on this machine ("
                        + "; ".join(f"{m}: {why}" for m, why in lacking.items())
                        + "), so none is run; docs/sandbox.md says what each mechanism needs")


def record() -> dict:
    """For run records: the mode and the mechanisms active here."""
    iso = isolation()
    return {"mode": mode(), "active": sorted(iso.active), "missing": iso.missing}


# ------------------------------------------------------------------------------------------- running

def run_python(code: str, *, timeout_s: float = 10, memory_mb: int = 512, max_output_bytes: int = 65_536,
               max_file_mb: int = 16, python: str | None = None) -> SandboxResult:
    """Run ``code`` as ``main.py`` in the sandbox described in the module docstring."""
    spec = _spec(code, [{"name": "program"}], timeout_s=timeout_s, memory_mb=memory_mb,
                 max_file_mb=max_file_mb, python=python)
    outcome = _launch(spec, timeout_s, max_output_bytes)
    return outcome.result("program")


def check_program(code: str, tests: str | list[str], entry_point: str | None = None, *, setup: str = "",
                  context: str = "", timeout_s: float = 10, memory_mb: int = 512) -> SandboxResult:
    """Run ``code``'s tests against it; ``passed`` only if every test passed.

    HumanEval style: ``tests`` is source defining ``check(candidate)`` and ``entry_point`` names the
    function; the harness calls ``check(entry_point)``. MBPP style: ``tests`` is a list of assert
    statements. ``setup`` (imports, helper code) runs before ``code`` and before the tests;
    ``context`` is trusted code only the tests' process runs first (HumanEval: the prompt, whose helper
    functions the tests call). The tests run in their own process; see :mod:`sdft.sandbox.guest`.
    """
    body = tests if isinstance(tests, str) else "\n".join(tests)
    harness = {"tests": body, "entry_point": entry_point, "context": f"{setup}\n{context}"}
    spec = _spec(f"{setup}\n{code}\n", [{"name": "server"}, {"name": "harness", "stdin": json.dumps(harness)}],
                 timeout_s=timeout_s, memory_mb=memory_mb, max_file_mb=16, python=None)
    return _launch(spec, timeout_s, 65_536).result("harness")


def _spec(program: str, workers: list[dict], *, timeout_s: float, memory_mb: int, max_file_mb: int,
          python: str | None, strict: bool | None = None) -> dict:
    import importlib.util

    python = python or sys.executable
    found = importlib.util.find_spec("pyseccomp")
    prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    return {"program": program, "workers": workers, "timeout_s": float(timeout_s), "memory_mb": int(memory_mb),
            "max_file_mb": int(max_file_mb), "tmp_mb": max(64, 4 * int(max_file_mb)), "python": python,
            "strict": mode() == "strict" if strict is None else strict, "required": REQUIRED, "env": _ENV,
            "guest": _GUEST.read_text(encoding="utf-8"),
            "import_paths": [str(Path(found.origin).parent)] if found and found.origin else [],
            "paths": list(SYSTEM_PATHS) + python_paths(python, prefixes)}


@dataclass
class _Outcome:
    stdout: str = ""
    stderr: str = ""
    elapsed_s: float = 0.0
    flooded: bool = False
    timed_out: bool = False
    workers: dict = field(default_factory=dict)
    mechanisms: list[str] = field(default_factory=list)
    missing: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # refusals and set-up errors
    over_memory: dict = field(default_factory=dict)  # the sandbox's processes together passed the limit

    def add(self, message: dict) -> None:
        for name in message.get("mechanisms", []):
            if name not in self.mechanisms:
                self.mechanisms.append(name)
        self.missing.update(message.get("missing", {}))
        self.workers.update(message.get("workers", {}))
        if "refused" in message:
            self.problems.append(f"sandbox refused to run untrusted code ({message['refused']})")
        if "error" in message:
            self.problems.append(f"sandbox could not start: {message['error']}")
        self.over_memory.update(message.get("over_memory", {}))
        if message.get("done", {}).get("timed_out"):
            self.timed_out = True

    def result(self, main: str) -> SandboxResult:
        worker = self.workers.get(main, {})
        status, returncode, detail = classify(self, main)
        return SandboxResult(status, returncode, self.stdout, self.stderr, worker.get("wall_s", self.elapsed_s),
                             detail, worker.get("cpu_s"), sorted(self.mechanisms))


_LIVE: set[subprocess.Popen] = set()  # hosts running now, for stop_all()
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


def stop_all() -> None:
    """End every sandboxed run of this process now (their results: ``error``), and start no new one
    until :func:`resume`. For Ctrl-C during parallel scoring: the worker threads are not interrupted."""
    _STOPPING.set()
    with _LIVE_LOCK:
        hosts = list(_LIVE)
    for host in hosts:
        if host.poll() is None:
            host.send_signal(signal.SIGTERM)


def resume() -> None:
    _STOPPING.clear()


def _launch(spec: dict, timeout_s: float, max_output_bytes: int) -> _Outcome:
    outcome, start = _Outcome(), time.monotonic()
    if _STOPPING.is_set():
        outcome.problems.append("sandbox stopped: the run was interrupted")
        return outcome
    report_r, report_w = os.pipe()
    spec = {**spec, "report_fd": report_w, "parent_pid": os.getpid(), "run_id": os.urandom(6).hex()}
    try:
        host = subprocess.Popen([sys.executable, "-I", "-S", "-B", str(_HOST)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(report_w,),
                                env={"PATH": _ENV["PATH"], "LC_ALL": "C.UTF-8"}, cwd="/", close_fds=True,
                                start_new_session=True)
    except OSError as exc:
        os.close(report_r)
        outcome.problems.append(f"sandbox could not start: {exc}")
        return outcome
    finally:
        os.close(report_w)
    stdout, stderr = Output(max_output_bytes), Output(max_output_bytes)
    with _LIVE_LOCK:
        _LIVE.add(host)
    try:
        try:
            host.stdin.write(json.dumps(spec).encode())
            host.stdin.close()
        except BrokenPipeError:
            pass
        report = collect(host, stdout, stderr, report_r, start + timeout_s + _HOST_GRACE_S,
                         flood=max(8 * max_output_bytes, 8 << 20), stopping=_STOPPING)
        outcome.flooded = report.flooded
        if report.stopped:
            outcome.problems.append("sandbox stopped: the run was interrupted")
        for line in report.lines:
            try:
                outcome.add(json.loads(line))
            except (ValueError, AttributeError):
                outcome.problems.append(f"sandbox host: unreadable report line {line[:80]!r}")
        if report.host_hung:
            outcome.timed_out = True
    finally:
        _stop_host(host, spec["run_id"])
        os.close(report_r)
        with _LIVE_LOCK:
            _LIVE.discard(host)
    outcome.stdout, outcome.stderr, outcome.elapsed_s = stdout.text(), stderr.text(), time.monotonic() - start
    return outcome


def _stop_host(host: subprocess.Popen, run_id: str) -> None:
    """The host normally exits by itself; SIGTERM lets it clean up; SIGKILL (its group) as a last resort.
    A host killed outright (by us, the OOM killer, a user) cleaned nothing: its cgroups are removed here."""
    if host.poll() is None:
        host.send_signal(signal.SIGTERM)
        try:
            host.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(host.pid, signal.SIGKILL)
            host.wait()
    for stream in (host.stdout, host.stderr):
        stream.close()
    if host.returncode != 0:
        with contextlib.suppress(OSError):  # a clean-up that fails changes no verdict; the next run sweeps
            Cgroup.remove_left(host.pid, run_id)
