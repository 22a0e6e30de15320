"""The kernel mechanisms behind :mod:`sdft.sandbox`: probing what this machine allows, and applying it.

Network namespace (``unshare``), Landlock write/TCP/scope restrictions, a throw-away cgroup (process
cap, memory cap, kill-all), RLIMIT_NPROC, all prepared in the parent and applied in the child between
fork and exec by :func:`preexec`. See :mod:`sdft.sandbox` for what the sandbox guarantees as a whole.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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
NPROC_MARGIN = 32  # processes (threads count too) the sandbox may add


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


def landlock_ruleset(abi: int, writable_dir: str) -> int:
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
        cgroup = Cgroup.create(64 << 20, 4)
    except OSError:
        cgroup = None
    if cgroup:
        cgroup.remove()
    return Isolation(flags, abi, cgroup is not None, os.geteuid() != 0)


class Cgroup:
    """A throw-away cgroup below this process's own one (v1 pids + memory controllers, or v2)."""

    _counter = itertools.count()

    def __init__(self, dirs: list[Path], procs: Path):
        self.dirs, self.procs = dirs, procs

    @classmethod
    def create(cls, memory_bytes: int, max_pids: int) -> Cgroup | None:
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


def user_task_count(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[17])
            except (OSError, ValueError, IndexError):
                continue
    return count


def preexec(cgroup_fds: list[int], unshare_flags: int, limits: list[tuple[int, int]], ruleset: int | None):
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
