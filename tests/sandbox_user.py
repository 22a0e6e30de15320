"""TEST HELPER: run Python code the way sdft runs for an ordinary user, on a kernel without Landlock.

The sandbox behaves differently for a normal user (one uid only, through a user namespace; no cgroup)
and without Landlock (nothing else keeps two processes of one uid apart), and the hostile re-test of
issue 26 forged verdicts exactly there. :func:`run_as_user` starts ``python -c CODE`` so:

* as root: under uid and gid 65534 (``nobody``), no groups. A folder on the way to the interpreter or
  to this checkout that others may not enter (``/root`` holding pyenv) is replaced, in a mount
  namespace of that process only, by a tmpfs that holds just the needed entries, bound from the host;
* not root: as ourselves;
* with a seccomp filter answering ENOSYS to the Landlock calls (``no_landlock``), which is how a
  kernel without Landlock answers: nothing in sdft is told it is a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534

_LAUNCHER = r'''
import ctypes, json, os, sys
from sdft.sandbox import kernel
settings = json.loads(sys.argv[1])
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    kernel._check(libc.unshare(kernel.CLONE_NEWNS), "unshare")
    kernel.mount(None, "/", None, kernel._MS_REC | kernel._MS_PRIVATE)
    for folder, children in settings["closed"].items():  # outermost first
        fds = [(name, os.open(os.path.join(folder, name), os.O_PATH)) for name in children]
        kernel.mount("tmpfs", folder, "tmpfs", kernel._MS_NOSUID | kernel._MS_NODEV, "mode=0755,size=1m")
        for name, fd in fds:
            target = os.path.join(folder, name)
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(target)
            else:
                open(target, "w").close()
            kernel.mount(f"/proc/self/fd/{fd}", target, None, kernel._MS_BIND | kernel._MS_REC)
            os.close(fd)
if settings["no_landlock"] or settings["no_namespaces"]:
    sc = kernel._pyseccomp()
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
        if settings["no_landlock"]:
            flt.add_rule(sc.ERRNO(38), name)  # ENOSYS
    if settings["no_namespaces"]:  # as a container's seccomp profile refuses them
        flt.add_rule(sc.ERRNO(1), "unshare")
    if os.geteuid() != 0:
        kernel.prctl(kernel._PR_SET_NO_NEW_PRIVS, 1)
    flt.load()
if os.geteuid() == 0 and settings["uid"] is not None:
    os.setgroups([])
    os.setresgid(settings["uid"], settings["uid"], settings["uid"])
    os.setresuid(settings["uid"], settings["uid"], settings["uid"])
os.execve(sys.executable, [sys.executable, "-c", settings["code"]], settings["env"])
'''


def _closed_folders(paths: list[str]) -> dict[str, list[str]]:
    """Folders others may not enter on the way to ``paths``, each with the entries that must stay."""
    closed: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(os.path.abspath(path)).parts
        for depth in range(1, len(parts) - 1):
            folder = os.path.join(*parts[:depth + 1])
            if not os.stat(folder).st_mode & 0o001:
                closed.setdefault(folder, set()).add(parts[depth + 1])
    outer = sorted(closed, key=len)  # a closed folder inside another is covered by the outer one's bind
    return {f: sorted(closed[f]) for f in outer if not any(f != o and f.startswith(o + "/") for o in outer)}


def _needed_paths() -> list[str]:
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return sorted({os.path.realpath(sys.executable), sys.executable, str(ROOT), *prefixes,
                   *(os.path.realpath(p) for p in prefixes)})


def run_as_user(code: str, *, no_landlock: bool = True, no_namespaces: bool = False, as_root: bool = False,
                env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``as_root``: stay root (when we are), only the kernel's answers change."""
    settings = {"code": code, "no_landlock": no_landlock, "no_namespaces": no_namespaces,
                "uid": None if as_root else NOBODY,
                "closed": _closed_folders(_needed_paths()) if os.geteuid() == 0 else {},
                "env": {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/tmp", "LC_ALL": "C.UTF-8",
                        **(env or {})}}
    return subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(settings)], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd="/", env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def last_json(completed: subprocess.CompletedProcess):
    """The JSON value the code printed last (its verdict for the test)."""
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])
