"""The sandbox host: run by :mod:`sdft.sandbox` as ``python -I -B host.py``, one per sandboxed run.

It reads a JSON spec on stdin and writes JSON lines to the report pipe (``spec["report_fd"]``): the
mechanisms applied, any refusal, and per program its exit status, wall time and CPU time as the kernel
reports them (``wait4``), never as the program claims. Processes::

    sdft ── host (root side, this file) ── init (PID 1 of the new PID namespace, in the private root)
                                             ├── program        (run mode)
                                             └── server, harness (check mode, two uids)

The host dies with sdft (parent-death signal: SIGTERM, handled: it kills init and removes its cgroup);
init dies with the host (SIGKILL); when init dies the kernel kills every process of the namespace, and
the private root with its tmpfs ``/tmp`` disappears with the namespace. Nothing is left on disk.
"""

import contextlib
import fcntl
import importlib.util
import json
import os
import resource
import select
import signal
import sys
import threading
import time

UID_BASE = 0x7E000000  # sandbox uids: far above real accounts, container ranges and systemd's dynamic uids
UID_SPAN = 0x3FFFFF  # pid_max is at most 2**22
# The programs' interpreter reads the guest code (sdft/sandbox/guest.py) from fd 6, then closes it.
_LOADER = ("import os, sys\nwith os.fdopen(6, 'rb') as _f:\n    _src = _f.read()\n"
           "exec(compile(_src, 'sdft-sandbox-guest', 'exec'))\n")


class _Stop(Exception):
    """SIGTERM or SIGINT: sdft gave up on this run, or died."""


def _stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: a second one must not cut the clean-up
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Stop()


def _high(fd: int) -> int:
    """Move a descriptor above the numbers the programs get (0-5), close-on-exec."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
    os.close(fd)
    return new


class Run:
    def __init__(self, spec: dict, iso):
        self.spec, self.iso, self.strict = spec, iso, spec["strict"]
        self.report_fd = _high(spec["report_fd"])
        self.active: list[str] = []
        self.root: str | None = None
        self.owner, self.env = os.getuid(), dict(spec["env"])  # sdft's uid
        self.memory_capped = False  # by the cgroup; else init watches the total
        self.limit_mb = spec["memory_mb"] + 64 * len(spec["workers"])  # + the interpreters
        base = UID_BASE + ((os.getpid() & UID_SPAN) << 1)  # pids are unique: so are the runs' uids
        self.uids = (base, base + 1) if os.geteuid() == 0 else (os.getuid(), os.getuid())
        self.gid = base if os.geteuid() == 0 else os.getgid()

    def report(self, **message) -> None:
        os.write(self.report_fd, json.dumps(message).encode() + b"\n")

    def attempt(self, name: str, action, *args):
        """Apply one mechanism; a required one that fails stops the run in strict mode."""
        try:
            result = action(*args)
        except (OSError, ImportError, RuntimeError, ValueError) as exc:
            self.report(missing={name: str(exc) or type(exc).__name__})
            if self.strict and name in self.spec["required"]:
                self.report(refused=f"{name}: {exc}")
                os._exit(126)
            return None
        self.active.append(name)
        return result if result is not None else True

    # --------------------------------------------------------------------------------------- host

    def main(self) -> None:
        # SIGTERM, which we handle: a SIGKILL would skip the clean-up of the cgroup.
        self.iso.die_with_parent(self.spec["parent_pid"], signal.SIGTERM)
        cgroup = timed_out = None
        try:
            cgroup = self.attempt("cgroup", self.make_cgroup)
            self.memory_capped = bool(cgroup and cgroup.memory)
            if self.memory_capped:
                self.active.append("memory_total")
            seccomp = self.attempt("seccomp", self.iso.seccomp_filter)  # built here, loaded by each program
            if self.attempt("namespaces", self.iso.unshare, os.geteuid() == 0):
                self.root = self.attempt("private_root", self.iso.build_root, self.spec["paths"],
                                         self.spec["tmp_mb"], self.uids[0], self.gid)
            if not self.root:  # say so: a record lists what was missing, not only what failed
                self.report(missing={m: "needs namespaces and a private root" for m in ("private_root", "fresh_proc")
                                     if m not in self.active})
            self.report(mechanisms=[m for m in self.active if m != "seccomp"])
            timed_out = self.supervise(cgroup, seccomp)
        except _Stop:
            pass
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if cgroup and cgroup is not True:
                cgroup.kill_all()
                cgroup.remove()
        self.report(done={"timed_out": timed_out})

    def make_cgroup(self):
        self.iso.Cgroup.sweep()
        return self.iso.Cgroup.create(self.limit_mb << 20, self.iso.NPROC_MARGIN * 2 * len(self.spec["workers"]),
                                      self.spec["run_id"])

    def supervise(self, cgroup, seccomp) -> bool:
        """Start init, wait for it until the deadline, kill it (and so the whole namespace)."""
        procs = cgroup.open_procs() if cgroup not in (None, True) else []
        sync_r, sync_w = map(_high, os.pipe())
        pid = os.fork()
        if pid == 0:
            try:
                os.close(sync_w)
                self.init(procs, sync_r, seccomp)
            except BaseException as exc:  # never return into the host's code
                self.report(error=f"init: {exc}")
            os._exit(1)
        os.close(sync_r)
        for fd in procs:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        try:
            os.write(sync_w, b"1")
            ready, _, _ = select.select([pidfd], [], [], self.spec["timeout_s"])
            return not ready
        finally:
            os.close(sync_w)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            os.close(pidfd)

    # --------------------------------------------------------------------------------------- init

    def init(self, procs: list[int], sync_r: int, seccomp) -> None:
        self.iso.die_with_parent()
        self.iso.not_dumpable()  # as a user namespace's root, init shares the programs' uid: no /proc/1/mem
        if os.read(sync_r, 1) != b"1":  # the host died before we could notice: stop
            os._exit(1)
        for fd in procs:
            os.write(fd, b"0")  # "0" = the writing process: join before anything else starts
        self.active = []
        workdir = None
        if self.root:
            self.attempt("fresh_proc", self.iso.mount_proc, self.root)
            if not self.attempt("private_root", self.iso.enter_root, self.root):
                self.root = None
        if not self.root:  # permissive mode only
            workdir = self.host_workdir()
        with open("main.py", "w", encoding="utf-8") as f:
            f.write(self.spec["program"])
        os.chown("main.py", self.uids[0], self.gid)
        watch = None if self.memory_capped else self.attempt("memory_total", MemoryWatch, self.iso, self.limit_mb)
        self.report(mechanisms=self.active)
        results = self.run_workers(seccomp, os.getcwd(), watch)
        if watch and watch.used > watch.limit:
            self.report(over_memory={"limit_mb": self.limit_mb, "used_mb": watch.used >> 20})
        self.report(workers=results)
        if workdir:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        os._exit(0)

    def host_workdir(self) -> str:
        """Without a private root: a temp folder of the host's, the program's own (its uid's, as root: the
        programs never run as root on the host's files), and its home and temp folder."""
        import tempfile

        workdir = tempfile.mkdtemp(prefix="sdft-sandbox-")
        os.chown(workdir, self.uids[0], self.gid)
        os.chdir(workdir)
        self.env.update(HOME=workdir, TMPDIR=workdir)
        return workdir

    def run_workers(self, seccomp, workdir: str, watch) -> dict:
        """Start the programs, reap everything (orphans too), report each program's end."""
        workers = self.spec["workers"]
        pipe = (lambda: tuple(map(_high, os.pipe())))
        to_server, from_server = (pipe(), pipe()) if len(workers) == 2 else (None, None)
        detail_r, detail_w = pipe()
        started, pids = {}, {}
        for index, worker in enumerate(workers):
            if worker.get("stdin") is not None:
                worker["stdin_read"], worker["stdin_fd"] = pipe()
            # fds 3 and 4: the call channel (server reads requests on 3 and answers on 4; harness the reverse)
            channel = {"server": (to_server and to_server[0], from_server and from_server[1]),
                       "harness": (from_server and from_server[0], to_server and to_server[1])}.get(worker["name"])
            worker["guest_read"], guest_w = pipe()
            pid = os.fork()
            if pid == 0:
                start = self.start_apart if worker["name"] == "server" else self.exec_worker
                start(worker, self.uids[min(index, 1)], channel, detail_w, seccomp, workdir)
            pids[pid], started[worker["name"]] = worker["name"], time.monotonic()
            os.close(worker["guest_read"])
            _write_all(guest_w, self.spec["guest"].encode())
            if worker.get("stdin") is not None:
                os.close(worker["stdin_read"])
                _write_all(worker["stdin_fd"], worker["stdin"].encode())
        for fd in [detail_w] + [fd for pair in (to_server, from_server) if pair for fd in pair]:
            os.close(fd)
        if watch:  # a thread only now: init forks no more (a fork beside a thread inherits its locks)
            threading.Thread(target=watch.run, daemon=True).start()
        results = {}
        while len(results) < len(workers):
            pid, status, usage = os.wait4(-1, 0)
            name = pids.get(pid)
            if name is None:
                continue  # an orphan of the programs, reparented to us
            results[name] = {"status": _status(status), "wall_s": time.monotonic() - started[name],
                             "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss}
            if name == "harness":  # the verdict is in: the program's server is no longer needed
                for other, n in pids.items():
                    if n == "server" and "server" not in results:
                        os.kill(other, signal.SIGKILL)
        detail = os.read(detail_r, 1000).decode("utf-8", "replace")
        if detail and "harness" in results:
            results["harness"]["detail"] = detail
        return results

    def start_apart(self, *args) -> None:
        """The program of check mode in a PID namespace and a /proc of its own, where the tests' process
        does not exist: nothing to signal, trace or open under /proc, whatever uid they share (a normal
        user's sandbox has one uid only). We stay outside as its parent and end as it ended, so that
        init's ``wait4`` reads its status and (children included) its times."""
        self.iso.die_with_parent()
        if not self.attempt("separate_tests", self.iso.unshare_pid):
            self.exec_worker(*args)  # permissive mode: the program runs beside the tests
        pid = os.fork()
        if pid == 0:
            self.exec_worker(*args, own_proc=True)
        os.closerange(3, self.report_fd)  # the pipes are the program's: an end kept here, it never sees EOF
        os.closerange(self.report_fd + 1, 1 << 16)
        _, status, _ = os.wait4(pid, 0)
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            if number not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(number, signal.SIG_DFL)  # the host's own handlers were inherited
            os.kill(os.getpid(), number)  # not dumpable (init's), so no core file either
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)

    def exec_worker(self, worker: dict, uid: int, channel, detail_w: int, seccomp, workdir: str,
                    own_proc: bool = False) -> None:
        try:
            self.active = []
            if own_proc:  # PID 1 of the namespace start_apart made: its /proc shows this namespace only
                self.attempt("separate_tests", self.iso.mount_proc, "")
            fds = {0: worker.get("stdin_read"), 3: channel and channel[0], 4: channel and channel[1],
                   5: detail_w if worker["name"] == "harness" else None, 6: worker["guest_read"]}
            for target, fd in fds.items():
                if fd is not None:
                    os.dup2(fd, target)
            if fds[0] is None:
                os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
            if worker["name"] == "harness":
                os.chdir("/")  # the program's folder is not the tests' business
            self.drop_privileges(uid)
            for kind, value in self.limits():
                resource.setrlimit(kind, (value, value))
            if self.root:
                self.attempt("landlock", self.iso.landlock_restrict, [workdir, "/dev/shm"])
            elif self.attempt("landlock", self.iso.landlock_restrict, [workdir], self.spec["paths"]):
                self.active.append("landlock_reads")  # the host's other files, /proc among them, unreadable
            if seccomp:
                self.attempt("seccomp", seccomp.load)
            self.report(mechanisms=self.active)
            os.closerange(7, self.report_fd)  # the report pipe stays until exec (close-on-exec) for errors
            os.closerange(self.report_fd + 1, 1 << 16)
            os.execve(self.spec["python"], [self.spec["python"], "-I", "-B", "-u", "-c", _LOADER,
                                            worker["name"] if worker["name"] != "program" else "run"],
                      self.env)
        except BaseException as exc:
            try:
                self.report(error=f"{worker['name']} could not start: {exc}")
            finally:
                os._exit(127)

    def drop_privileges(self, uid: int) -> None:
        """No capabilities, no groups, ``no_new_privs``; ``unprivileged`` only when that also leaves nothing
        of sdft's within reach: a uid of its own, or sdft's uid (a normal user's) inside the private root."""
        if self.root or uid != self.owner:
            self.attempt("unprivileged", self.iso.drop_privileges, uid, self.gid)
            return
        self.attempt("no_capabilities", self.iso.drop_privileges, uid, self.gid)
        self.report(missing={"unprivileged": f"runs as sdft's own uid {uid} on the host's files "
                                             "(no user namespace, no private root)"})

    def limits(self) -> list[tuple[int, int]]:
        spec = self.spec
        return [(resource.RLIMIT_AS, spec["memory_mb"] << 20), (resource.RLIMIT_CPU, int(spec["timeout_s"]) + 2),
                (resource.RLIMIT_FSIZE, spec["max_file_mb"] << 20), (resource.RLIMIT_NOFILE, 256),
                (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, self.nproc()),
                (resource.RLIMIT_RTPRIO, 0), (resource.RLIMIT_NICE, 0), (resource.RLIMIT_MEMLOCK, 0)]

    def nproc(self) -> int:
        """Counted per real uid: a sandbox uid of our own starts from zero; a shared one from its count."""
        if os.geteuid() == 0 and self.root:
            return self.iso.NPROC_MARGIN
        return _tasks_of(os.getuid()) + self.iso.NPROC_MARGIN


class MemoryWatch:
    """One memory limit for all the sandbox's processes where no memory cgroup gives one (a normal user
    has none, and RLIMIT_AS bounds each process alone: 4 x 400 MB ran under 512 MB). Every 50 ms init
    sums its descendants' proportional set sizes (pages a fork shares count once); past the limit it
    kills them all. The overshoot is what they allocate in 50 ms, each still under RLIMIT_AS."""

    def __init__(self, iso, limit_mb: int):
        self.limit, self.used = limit_mb << 20, 0
        iso.prctl(36, 1, "subreaper")  # PR_SET_CHILD_SUBREAPER: orphans stay ours, and in the sum
        if _memory_of(os.getpid()) is None:
            raise OSError("cannot read the sandbox's processes in /proc")

    def run(self) -> None:
        while self.used <= self.limit:
            time.sleep(0.05)
            self.used = sum(_memory_of(pid) or 0 for pid in _descendants(os.getpid()))
        for _ in range(100):  # they may fork while we kill; the process cap bounds how often
            left = _descendants(os.getpid())
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if not left:
                return
            time.sleep(0.01)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in (e for e in os.scandir("/proc") if e.name.isdigit()):
        with contextlib.suppress(OSError, ValueError, IndexError), open(os.path.join(entry.path, "stat"), "rb") as f:
            children.setdefault(int(f.read().rsplit(b")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def _memory_of(pid: int) -> int | None:
    """Bytes: the proportional set size, or the resident set where that is not ours to read."""
    unreadable = (OSError, StopIteration, ValueError, IndexError)
    with contextlib.suppress(*unreadable), open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith(b"Pss:"))
    with contextlib.suppress(*unreadable), open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)


def _status(status: int) -> dict:
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit": os.WEXITSTATUS(status)}


def _tasks_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    with open(os.path.join(entry.path, "stat")) as f:
                        count += int(f.read().rsplit(")", 1)[1].split()[17])
            except (OSError, ValueError, IndexError):
                continue
    return count


def _load_isolation():
    """kernel.py with cgroup.py's Cgroup beside its mechanisms, both loaded by path (no sdft package here)."""
    here = os.path.dirname(os.path.abspath(__file__))
    kernel, cgroups = (importlib.util.spec_from_file_location(f"sdft_{name}", os.path.join(here, f"{name}.py"))
                       for name in ("kernel", "cgroup"))
    module, cgroup = importlib.util.module_from_spec(kernel), importlib.util.module_from_spec(cgroups)
    kernel.loader.exec_module(module)
    cgroups.loader.exec_module(cgroup)
    module.Cgroup = cgroup.Cgroup
    return module


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sys.path.extend(spec["import_paths"])  # where pyseccomp is installed
    Run(spec, _load_isolation()).main()


if __name__ == "__main__":
    main()
