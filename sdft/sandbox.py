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

Kernel isolation where this machine supports it (:func:`isolation` says which; a mechanism found
working that then fails to apply makes the run an ``error``, never a silent downgrade):

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

import ctypes
import itertools
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
from functools import lru_cache
from pathlib import Path
from typing import Literal

_ENV_PATH = "/usr/bin:/bin"
_CLONE_NEWNET, _CLONE_NEWUSER = 0x40000000, 0x10000000
_PR_SET_NO_NEW_PRIVS = 38
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446  # all archs
# Landlock filesystem rights we restrict: every way of changing the file tree. Reading and executing
# are left alone (the interpreter needs its stdlib and site-packages wherever they are).
_FS_WRITE_FILE, _FS_TRUNCATE = 1 << 1, 1 << 14
_FS_WRITES_V1 = _FS_WRITE_FILE | sum(1 << b for b in range(4, 13))  # remove dir/file, make char..sym
_FS_REFER = 1 << 13  # ABI 2
_NET_TCP = (1 << 0) | (1 << 1)  # bind, connect (ABI 4)
_SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets, signals (ABI 6)
_NPROC_MARGIN = 32  # processes (threads count too) the sandbox may add
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


@dataclass(frozen=True)
class Isolation:
    """Which kernel mechanisms this machine gives the sandbox (see the module docstring)."""

    unshare_flags: int  # 0 = no network namespace
    landlock_abi: int  # 0 = no Landlock
    cgroup: bool  # a pids cgroup can be created (process cap, kill-all)
    nproc_limit: bool  # RLIMIT_NPROC is enforced (not root)

    @property
    def process_limit(self) -> bool:
        return self.cgroup or self.nproc_limit


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
if _libc is not None:
    _libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def _syscall(number: int, *args) -> int:
    return _libc.syscall(ctypes.c_long(number), *args)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # the kernel struct is __attribute__((packed))
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _landlock_ruleset(abi: int, writable_dir: str) -> int:
    """A Landlock ruleset fd: writes only beneath ``writable_dir`` (and to /dev/null), no TCP, scoped."""
    fs = _FS_WRITES_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs, _NET_TCP if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8  # the struct grew with the ABI
    ruleset = _check(_syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                              ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        for path, allowed in ((writable_dir, fs), ("/dev/null", fs & (_FS_WRITE_FILE | _FS_TRUNCATE))):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(allowed, fd)
                _check(_syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1),  # path-beneath
                                ctypes.byref(rule), ctypes.c_uint32(0)), "landlock_add_rule")
            finally:
                os.close(fd)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


@lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe once per process what the kernel lets an unprivileged sandbox do here."""
    if _libc is None:
        return Isolation(0, 0, False, False)
    abi = max(0, _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1)))
    flags = 0
    for candidate in (_CLONE_NEWNET, _CLONE_NEWUSER | _CLONE_NEWNET):
        try:  # unshare in a throw-away child: it must not change this process's namespaces
            subprocess.run(["/bin/true"], check=True, close_fds=True,
                           preexec_fn=lambda c=candidate: _check(_libc.unshare(c), "unshare"))
            flags = candidate
            break
        except (OSError, subprocess.SubprocessError):
            continue
    try:
        cgroup = _Cgroup.create(64 << 20, 4)
    except OSError:
        cgroup = None
    if cgroup:
        cgroup.remove()
    return Isolation(flags, abi, cgroup is not None, os.geteuid() != 0)


class _Cgroup:
    """A throw-away cgroup below this process's own one (v1 pids + memory controllers, or v2)."""

    _counter = itertools.count()

    def __init__(self, dirs: list[Path], procs: Path):
        self.dirs, self.procs = dirs, procs

    @classmethod
    def create(cls, memory_bytes: int, max_pids: int) -> _Cgroup | None:
        own = {}  # controller ("unified" for v2) -> this process's cgroup path
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            own.update((c, path) for c in (controllers.split(",") if controllers else ["unified"]))
        name = f"sdft-sandbox-{os.getpid()}-{next(cls._counter)}"
        root = Path("/sys/fs/cgroup")
        if (root / "pids").is_dir() and "pids" in own:  # cgroup v1 (or hybrid)
            plan = [(root / "pids" / own["pids"].lstrip("/") / name, {"pids.max": max_pids})]
            if (root / "memory").is_dir() and "memory" in own:
                plan.append((root / "memory" / own["memory"].lstrip("/") / name,
                             {"memory.limit_in_bytes": memory_bytes}))
        elif (root / "cgroup.controllers").is_file() and "unified" in own:  # cgroup v2
            plan = [(root / own["unified"].lstrip("/") / name, {"pids.max": max_pids, "memory.max": memory_bytes})]
        else:
            return None
        made: list[Path] = []
        for directory, limits in plan:
            try:
                directory.mkdir()
                made.append(directory)
                for key, value in limits.items():
                    (directory / key).write_text(str(value))
            except OSError:
                if made and made[-1] == directory:
                    made.pop().rmdir()
                if not made:  # the pids limit is the one that matters; memory is a bonus
                    return None
        return cls(made, made[0] / "cgroup.procs")

    def open_procs(self) -> list[int]:  # opened here, so that the child only has to write "0"
        return [os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in self.dirs]

    def kill_all(self) -> None:
        for _ in range(200):  # pids.max bounds how many can appear between rounds
            pids = [int(p) for p in self.procs.read_text().split()]
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        for directory in self.dirs:
            for _ in range(100):  # killed tasks leave the group asynchronously
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _user_task_count(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[17])
            except (OSError, ValueError, IndexError):
                continue
    return count


def _preexec(cgroup_fds: list[int], unshare_flags: int, limits: list[tuple[int, int]], ruleset: int | None):
    """Runs in the child between fork and exec. Everything was prepared in the parent; an exception
    here aborts the start (subprocess raises SubprocessError), which the caller reports as ``error``."""
    def setup():
        for fd in cgroup_fds:
            os.write(fd, b"0")  # "0" = the writing process: join before anything else starts
        if unshare_flags:
            _check(_libc.unshare(unshare_flags), "unshare")
        for kind, value in limits:
            resource.setrlimit(kind, (value, value))
        if ruleset is not None:
            _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")
            _check(_syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
                   "landlock_restrict_self")
    return setup


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
            cgroup = _Cgroup.create(memory_mb << 20, _NPROC_MARGIN) if iso.cgroup else None
            if iso.cgroup and cgroup is None:  # it worked when probed: never run with less protection
                raise OSError("could not create a cgroup")
            cgroup_fds = cgroup.open_procs() if cgroup else []
            ruleset = _landlock_ruleset(iso.landlock_abi, workdir) if iso.landlock_abi else None
            nproc = _user_task_count(os.getuid()) + _NPROC_MARGIN if iso.nproc_limit else _NPROC_MARGIN
            limits = [(resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, math.ceil(timeout_s) + 1),
                      (resource.RLIMIT_FSIZE, max_file_mb << 20), (resource.RLIMIT_NOFILE, 256),
                      (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, nproc)]
            env = {"PATH": _ENV_PATH, "HOME": workdir, "TMPDIR": workdir, "LC_ALL": "C.UTF-8"}
            proc = subprocess.Popen([python or sys.executable, "-I", "-B", "-u", "-c", _PRELUDE], cwd=workdir,
                                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, close_fds=True, start_new_session=True,
                                    preexec_fn=_preexec(cgroup_fds, iso.unshare_flags, limits, ruleset))
        except (OSError, subprocess.SubprocessError) as exc:  # SubprocessError: _preexec failed
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
