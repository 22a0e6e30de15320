"""A throw-away cgroup for one sandbox run: process cap, memory cap, kill-all (:mod:`sdft.sandbox`).

Standard library only, like :mod:`sdft.sandbox.kernel`: the sandbox host loads this file by path in its
isolated interpreter, outside the ``sdft`` package.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import time
from pathlib import Path


class Cgroup:
    """A throw-away cgroup below this process's own one (v1 pids + memory controllers, or v2)."""

    _counter = itertools.count()
    PREFIX = "sdft-sandbox-"

    def __init__(self, dirs: list[Path], memory: bool = False):
        self.dirs, self.procs, self.memory = dirs, dirs[0] / "cgroup.procs", memory  # memory: capped too

    @staticmethod
    def _parents() -> list[tuple[Path, str]]:
        own = {}  # controller ("unified" for v2) -> this process's cgroup path
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            own.update((c, path) for c in (controllers.split(",") if controllers else ["unified"]))
        root = Path("/sys/fs/cgroup")
        if (root / "pids").is_dir() and "pids" in own:  # cgroup v1 (or hybrid)
            found = [(root / "pids" / own["pids"].lstrip("/"), "pids")]
            if (root / "memory").is_dir() and "memory" in own:
                found.append((root / "memory" / own["memory"].lstrip("/"), "memory"))
            return found
        if (root / "cgroup.controllers").is_file() and "unified" in own:
            return [(root / own["unified"].lstrip("/"), "v2")]
        return []

    @classmethod
    def name(cls, host_pid: int, run_id: str) -> str:
        """The host's pid (for :meth:`sweep`) and the run's own id (sdft removes exactly this one)."""
        return f"{cls.PREFIX}{host_pid}-{run_id}"

    @classmethod
    def create(cls, memory_bytes: int, max_pids: int, run_id: str | None = None) -> Cgroup:
        limits = {"pids": {"pids.max": max_pids}, "memory": {"memory.limit_in_bytes": memory_bytes},
                  "v2": {"pids.max": max_pids, "memory.max": memory_bytes}}
        name = cls.name(os.getpid(), run_id or str(next(cls._counter)))
        made: list[Path] = []
        memory = False
        for parent, kind in cls._parents():
            directory = parent / name
            try:
                directory.mkdir()
                made.append(directory)
                for key, value in limits[kind].items():
                    (directory / key).write_text(str(value))
                memory = memory or kind != "pids"
            except OSError:
                if made and made[-1] == directory:
                    made.pop().rmdir()
                if not made:  # the pids limit is the one that matters; memory is a bonus
                    raise
        if not made:
            raise OSError(errno.ENOENT, "no writable cgroup tree with a pids controller")
        return cls(made, memory=memory)

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
            _rmdir_when_empty(directory)

    @classmethod
    def remove_left(cls, host_pid: int, run_id: str) -> None:
        """What a host that was killed outright left: its cgroups (and any process still in them)."""
        found = [d for parent, _ in cls._parents() if (d := parent / cls.name(host_pid, run_id)).is_dir()]
        if found:
            group = cls(found)
            group.kill_all()
            group.remove()

    @classmethod
    def sweep(cls) -> None:
        """Remove empty cgroups left by sandbox hosts that were killed outright (SIGKILL, OOM)."""
        for parent, _ in cls._parents():
            for directory in parent.glob(cls.PREFIX + "*"):
                pid = directory.name[len(cls.PREFIX):].split("-")[0]
                if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    _rmdir_when_empty(directory, tries=1)


def _rmdir_when_empty(directory: Path, tries: int = 100) -> None:
    for _ in range(tries):  # killed tasks leave the group asynchronously
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
