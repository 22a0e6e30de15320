"""The sdft side of a sandboxed run: reading the host's pipes, and turning its report into a verdict."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field


class Output:
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


@dataclass
class Collected:
    lines: list[str] = field(default_factory=list)
    flooded: bool = False
    stopped: bool = False
    host_hung: bool = False


def collect(host: subprocess.Popen, stdout: Output, stderr: Output, report_fd: int, deadline: float,
            flood: int, stopping: threading.Event) -> Collected:
    """Read the program's output and the host's report until all three pipes close (every process of
    the sandbox has ended). A flood of output, or ``stopping``, asks the host to end the run; a host
    that is still there at ``deadline`` is killed."""
    got, report = Collected(), bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(host.stdout, selectors.EVENT_READ, stdout)
        selector.register(host.stderr, selectors.EVENT_READ, stderr)
        selector.register(report_fd, selectors.EVENT_READ, None)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                got.host_hung = True
                os.killpg(host.pid, signal.SIGKILL)
                break
            for key, _ in selector.select(timeout=min(left, 0.25)):
                data = os.read(key.fd, 65_536)
                if not data:
                    selector.unregister(key.fileobj)
                elif key.data is None:
                    report += data
                else:
                    key.data.add(data)
            asked = got.flooded or got.stopped  # one SIGTERM: the host then cleans up and leaves
            got.flooded = got.flooded or (not asked and stdout.total + stderr.total > flood)
            got.stopped = got.stopped or (not asked and stopping.is_set())
            if not asked and (got.flooded or got.stopped) and host.poll() is None:
                host.send_signal(signal.SIGTERM)
    got.lines = [line for line in report.decode("utf-8", "replace").splitlines() if line.strip()]
    return got


def classify(outcome, main: str) -> tuple[str, int | None, str]:
    """``(status, returncode, detail)`` from the host's report on the program ``main``."""
    worker = outcome.workers.get(main)
    if outcome.problems:
        return "error", None, outcome.problems[0]
    if outcome.over_memory:
        return "error", None, (f"out of memory: the sandbox's processes together used {outcome.over_memory['used_mb']}"
                               f" MB, more than its {outcome.over_memory['limit_mb']} MB")
    if outcome.timed_out:
        return "timeout", None, "wall-clock limit"
    if outcome.flooded:
        return "error", None, "output limit exceeded"
    if worker is None:
        return "error", None, "the sandbox ended without a result"
    server = outcome.workers.get("server", {}).get("status", {})
    if main == "harness" and server.get("signal") == signal.SIGXCPU:
        return "timeout", None, "CPU time limit"
    status = worker["status"]
    if "signal" in status:
        return (*_signalled(status["signal"]),)
    code = status["exit"]
    if code == 0:
        return "passed", 0, ""
    if main == "harness":
        return "failed", code, worker.get("detail", "the tests failed")
    last = outcome.stderr.strip().splitlines()[-1] if outcome.stderr.strip() else ""
    if last.startswith("MemoryError") or "Cannot allocate memory" in last:
        return "error", code, f"out of memory: {last}"
    return "failed", code, last[:300]


def _signalled(number: int) -> tuple[str, int, str]:
    name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
    if number == signal.SIGXCPU:
        return "timeout", -number, "CPU time limit"
    return "error", -number, f"killed by {name}" + (" (memory or CPU limit)" if number == signal.SIGKILL else "")
