"""Run untrusted Python (model-written code and its tests) in a throw-away subprocess.

Always, for each :func:`run_python` call: a fresh ``python -I -B -u`` (the interpreter running sdft) in
a new temporary working directory, deleted afterwards; an environment built from scratch (PATH, HOME and
TMPDIR = the temp dir, LC_ALL), so none of the parent's variables (tokens, keys) leak; stdin /dev/null,
the parent's other files closed; limits on address space (``memory_mb``), CPU seconds (just over
``timeout_s``, so a process that escaped the kill still dies), file size, open files, no core dumps,
and RLIMIT_NPROC (above the user's current count; the kernel ignores it for root, hence the cgroup); a
new session whose process group is SIGKILLed when the run ends; a wall-clock timeout; stdout/stderr
capped (head and tail kept, a flood killed); and, before the user code, an audit hook
(``sys.addaudithook``, irremovable) refusing socket creation, connect, bind, sendto and name lookups.

Kernel isolation where this machine supports it (:func:`isolation` says which, :mod:`sdft.isolation`
applies it; a mechanism found working that then fails to apply makes the run an ``error``, never a
silent downgrade):

* a new network namespace (as non-root inside a new user namespace): only a downed loopback, so no
  network at all, even through ctypes or a child program;
* Landlock (Linux >= 5.13, unprivileged): nothing outside the temp dir (and /dev/null) can be created,
  written, truncated, renamed or deleted; ABI >= 4: no TCP bind/connect; ABI >= 6: no signals to, and
  no abstract unix sockets of, processes outside the sandbox;
* a throw-away cgroup (root with a writable cgroup tree): ``pids.max`` stops fork bombs, one memory cap
  for all its processes, and every member is killed at the end, even those that called ``setsid``.

Not guaranteed: reading is allowed wherever the user may read (but the data can only reach our stdout
capture); without Landlock, code running as root can write anywhere; without a cgroup, root has no
fork-bomb cap (only the timeout bounds it) and a ``setsid`` escapee lives until its CPU limit; killed
children may linger briefly as zombies until init reaps them; disk use in the temp dir is bounded only
by the file-size limit per file and the timeout. Linux only.
"""

from __future__ import annotations

import math
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sdft.isolation import NPROC_MARGIN, Cgroup, isolation, landlock_ruleset, preexec, user_task_count

__all__ = ["SandboxResult", "run_python", "check_program", "isolation"]

_ENV_PATH = "/usr/bin:/bin"
_GUARD_EVENTS = ("socket.__new__", "socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg",
                 "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo")
# Runs before the user's main.py: the audit hook stays for the life of the interpreter.
# The code runs in the real __main__ namespace (so pickle finds its classes), with the helper names removed.
_PRELUDE = f"""import sys as _sys
def _sdft_guard(event, args, blocked=frozenset({_GUARD_EVENTS!r})):
    if event in blocked:
        raise PermissionError("network access is disabled in the sdft sandbox (" + event + ")")
_sys.addaudithook(_sdft_guard)
_sys.argv = ["main.py"]
with open("main.py", "rb") as _f:
    _code = compile(_f.read(), "main.py", "exec")
__file__ = "main.py"
del _sys, _sdft_guard, _f
exec(globals().pop("_code"), globals())
"""

Status = Literal["passed", "failed", "timeout", "error"]


@dataclass
class SandboxResult:
    """``passed``: exit status 0. ``failed``: the program ended with another status on its own (an
    exception, a failed assert, a syntax error). ``timeout``: wall-clock or CPU limit reached.
    ``error``: anything abnormal: out of memory, killed by a signal, output flood, or the sandbox could
    not be set up. ``detail`` says which."""

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"




class _Output:
    """Keeps the first and last ``cap / 2`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int):
        self.half, self.head, self.tail, self.total = max(cap // 2, 1), bytearray(), bytearray(), 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        self.head += data[:room]
        self.tail += data[max(room, 0):]
        if len(self.tail) > 2 * self.half:
            del self.tail[:-self.half]

    def text(self) -> str:
        tail = bytes(self.tail[-self.half:])
        dropped = self.total - len(self.head) - len(tail)
        middle = f"\n[... {dropped} bytes cut ...]\n".encode() if dropped > 0 else b""
        return (bytes(self.head) + middle + tail).decode("utf-8", "replace")


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):  # the code made a directory unreadable (stops non-root owners only)
        try:
            os.chmod(path, 0o700)
            for root, dirs, _ in os.walk(path):  # top-down: each dir is opened up before it is entered
                for name in dirs:
                    if not os.path.islink(os.path.join(root, name)):  # never chmod through a link
                        os.chmod(os.path.join(root, name), 0o700)
        except OSError:
            pass
        shutil.rmtree(path, ignore_errors=True)


def run_python(code: str, *, timeout_s: float = 10, memory_mb: int = 512, max_output_bytes: int = 65_536,
               max_file_mb: int = 16, python: str | None = None) -> SandboxResult:
    """Run ``code`` as ``main.py`` in the sandbox described in the module docstring."""
    iso = isolation()
    workdir = tempfile.mkdtemp(prefix="sdft-sandbox-")
    cgroup = ruleset = proc = None
    cgroup_fds: list[int] = []
    stdout, stderr = _Output(max_output_bytes), _Output(max_output_bytes)
    start = time.monotonic()
    try:
        try:
            Path(workdir, "main.py").write_text(code, encoding="utf-8")
            cgroup = Cgroup.create(memory_mb << 20, NPROC_MARGIN) if iso.cgroup else None
            if iso.cgroup and cgroup is None:  # it worked when probed: never run with less protection
                raise OSError("could not create a cgroup")
            cgroup_fds = cgroup.open_procs() if cgroup else []
            ruleset = landlock_ruleset(iso.landlock_abi, workdir) if iso.landlock_abi else None
            nproc = user_task_count(os.getuid()) + NPROC_MARGIN if iso.nproc_limit else NPROC_MARGIN
            limits = [(resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, math.ceil(timeout_s) + 1),
                      (resource.RLIMIT_FSIZE, max_file_mb << 20), (resource.RLIMIT_NOFILE, 256),
                      (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, nproc)]
            env = {"PATH": _ENV_PATH, "HOME": workdir, "TMPDIR": workdir, "LC_ALL": "C.UTF-8"}
            proc = subprocess.Popen([python or sys.executable, "-I", "-B", "-u", "-c", _PRELUDE], cwd=workdir,
                                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, close_fds=True, start_new_session=True,
                                    preexec_fn=preexec(cgroup_fds, iso.unshare_flags, limits, ruleset))
        except (OSError, subprocess.SubprocessError) as exc:  # SubprocessError: preexec failed
            return SandboxResult("error", None, "", "", time.monotonic() - start, f"sandbox could not start: {exc}")
        finally:
            for fd in cgroup_fds + ([ruleset] if ruleset is not None else []):
                os.close(fd)
        # Output past the kept head and tail is drained and dropped; a flood is killed.
        flood = max(8 * max_output_bytes, 8 << 20)
        timed_out, flooded = _collect(proc, stdout, stderr, start + timeout_s, flood)
        returncode = proc.returncode
    finally:
        if proc is not None:
            _kill_group(proc)
        if cgroup:
            cgroup.kill_all()
            cgroup.remove()
        _rmtree(workdir)
    status, detail = _classify(returncode, timed_out, flooded, stderr.text())
    return SandboxResult(status, returncode, stdout.text(), stderr.text(), time.monotonic() - start, detail)


def _collect(proc, stdout: _Output, stderr: _Output, deadline: float, flood: int) -> tuple[bool, bool]:
    """Read both pipes until the process exits (then drain), the deadline passes, or output floods."""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, stdout)
        selector.register(proc.stderr, selectors.EVENT_READ, stderr)
        exited_at = None
        while selector.get_map():
            now = time.monotonic()
            if proc.poll() is not None:
                # Background children may hold the pipes open after the main process exits: drain briefly.
                exited_at = exited_at or now
                if now - exited_at > 0.2:
                    break
            elif now >= deadline:
                _kill_group(proc)
                return True, False
            for key, _ in selector.select(timeout=0.05 if exited_at else min(0.05, deadline - now)):
                data = os.read(key.fd, 65_536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                key.data.add(data)
                if stdout.total + stderr.total > flood:
                    _kill_group(proc)
                    return False, True
    try:  # both pipes closed: the process may still run (it closed them itself)
        proc.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return True, False
    return False, False


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group (the main process leads it), reap, close the pipes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:  # it moved itself to another process group
        proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _classify(returncode: int | None, timed_out: bool, flooded: bool, stderr: str) -> tuple[Status, str]:
    if timed_out:
        return "timeout", "wall-clock limit"
    if flooded:
        return "error", "output limit exceeded"
    if returncode == 0:
        return "passed", ""
    if returncode is not None and returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        if -returncode == signal.SIGXCPU:
            return "timeout", "CPU time limit"
        return "error", f"killed by {sig}" + (" (memory or CPU limit)" if -returncode == signal.SIGKILL else "")
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if last.startswith("MemoryError") or "Cannot allocate memory" in last:
        return "error", f"out of memory: {last}"
    return "failed", last[:300]


def check_program(code: str, tests: str | list[str], entry_point: str | None = None, *, setup: str = "",
                  timeout_s: float = 10, memory_mb: int = 512) -> SandboxResult:
    """Run ``code`` with its tests in the sandbox; ``passed`` only if every test passed.

    HumanEval style: ``tests`` is source defining ``check(candidate)`` and ``entry_point`` names the
    function; the harness calls ``check(entry_point)``. MBPP style: ``tests`` is a list of assert
    statements (``setup`` goes first: imports, helper code). A random marker written to stdout after
    the tests must appear, so code that ends the process early with ``exit(0)`` does not pass (short of
    code that reads its own source file to forge the marker).
    """
    marker = f"__sdft_tests_done_{secrets.token_hex(8)}__"
    if entry_point is not None:
        body = f"{tests}\n\ncheck({entry_point})\n"
    else:
        body = tests if isinstance(tests, str) else "\n".join(tests)
    program = f"{setup}\n{code}\n\n{body}\n\nimport os as _sdft_os\n_sdft_os.write(1, b'\\n{marker}\\n')\n"
    result = run_python(program, timeout_s=timeout_s, memory_mb=memory_mb)
    if result.status == "passed" and marker not in result.stdout:
        result.status, result.detail = "failed", "the program exited before its tests finished"
    if marker in result.stdout:
        result.stdout = result.stdout.replace(f"\n{marker}\n", "")
    return result
