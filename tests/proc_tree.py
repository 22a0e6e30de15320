"""The processes descended from one a test started, told apart by descent, never by name: other vLLM jobs
may share the machine, and a test kills, at the end, only what it recorded and found still alive."""

from __future__ import annotations

import time


class Tree:
    """The processes descended from ``root``, as seen while it lived (psutil remembers each one's start
    time: a pid reused later by someone else's process is not ours)."""

    def __init__(self, root: int):
        import psutil

        self.psutil, self.root, self.seen = psutil, psutil.Process(root), {}

    def poll(self) -> None:
        try:
            for child in self.root.children(recursive=True):
                self.seen.setdefault(child.pid, child)
        except self.psutil.Error:
            pass

    def names(self) -> list[str]:
        found = []
        for proc in self.seen.values():
            try:
                found.append(" ".join(proc.cmdline()) or proc.name())
            except self.psutil.Error:
                found.append(f"pid {proc.pid} (gone)")
        return found

    def has_engine(self) -> bool:
        return any("EngineCore" in name for name in self.names())

    def alive(self) -> list[str]:
        left = []
        for proc in self.seen.values():
            try:
                if proc.is_running() and proc.status() != self.psutil.STATUS_ZOMBIE:
                    left.append(f"{proc.pid} {' '.join(proc.cmdline())[:80] or proc.name()}")
            except self.psutil.Error:
                pass
        return left

    def wait_gone(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def kill_left(self) -> None:
        """SIGKILL what is left; multiprocessing's resource tracker last, given time to exit by itself once
        the others are gone (it then unlinks the semaphores and shared memory they leaked)."""
        def tracker(proc) -> bool:
            try:
                return "resource_tracker" in " ".join(proc.cmdline())
            except self.psutil.Error:
                return False

        procs = sorted(self.seen.values(), key=tracker)
        for proc in procs:
            try:
                if tracker(proc):
                    proc.wait(timeout=5)
                if proc.is_running():
                    proc.kill()
            except self.psutil.Error:
                pass
