"""Hostile programs, one test per behaviour found in the audit (issue 15, item 1): each must be contained.

Every attack is made the way a program could make it, Python's guards bypassed where that is easy
(ctypes calls into libc), and the test checks the outcome on the host, not only an error message.
A victim folder outside ``/tmp`` is made visible in the sandbox (read-only) through the interpreter's
folder: the sandbox binds the folder of the ``python`` it is given.
"""

import importlib.util
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from sdft import sandbox
from sdft.sandbox import check_program, run_python

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")
ISO = sandbox.isolation()
needs_root_drop = pytest.mark.skipif(not ISO.complete, reason=f"incomplete sandbox here: {ISO.missing}")
# The normal-user tests simulate a kernel without Landlock (or namespaces) with a seccomp filter.
needs_pyseccomp = pytest.mark.skipif(importlib.util.find_spec("pyseccomp") is None, reason="pyseccomp is missing")
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


@pytest.fixture
def visible(tmp_path):
    """A host folder (outside /tmp, which the sandbox replaces) seen by the sandbox, with victims in it,
    and the ``python`` to pass to run_python for that."""
    base = Path(tempfile.mkdtemp(prefix="sdft-victim-", dir="/var/tmp" if os.access("/var/tmp", os.W_OK)
                                 else Path.home()))
    base.chmod(0o755)
    (base / "python").symlink_to(sys.executable)
    victim = base / "victim.txt"
    victim.write_text("original")
    os.chmod(victim, 0o666)  # world-writable: only the sandbox's own rules protect it
    os.utime(victim, (1_000_000, 1_000_000))
    yield base, victim, str(base / "python")
    shutil.rmtree(base, ignore_errors=True)


def _untouched(victim: Path) -> bool:
    st = victim.stat()
    return (victim.read_text() == "original" and st.st_mode & 0o777 == 0o666 and st.st_uid == os.getuid()
            and st.st_mtime == 1_000_000)


def _errno_of(code: str, python: str | None = None) -> list[str]:
    """Run ``code`` (which prints results) and return its printed lines."""
    result = run_python(code, python=python)
    assert result.status in ("passed", "failed"), result
    return result.stdout.split()


# ---------------------------------------------------------------------------------- the filesystem

@needs_root_drop
@pytest.mark.parametrize("attack", [
    "os.chmod(V, 0o777)", "os.chown(V, 1234, 1234)", "os.utime(V, (0, 0))", "os.utime(V)",
    "open(V, 'w').write('pwned')", "os.truncate(V, 0)", "os.remove(V)", "os.rename(V, V + '.moved')",
    "os.setxattr(V, 'user.x', b'1')"])
def test_files_outside_cannot_be_changed(visible, attack):
    base, victim, python = visible
    result = run_python(f"import os\nV = {str(victim)!r}\nassert os.path.exists(V)\n{attack}", python=python)
    assert result.status == "failed" and ("PermissionError" in result.detail or "OSError" in result.detail), \
        result.detail
    assert _untouched(victim) and sorted(p.name for p in base.iterdir()) == ["python", "victim.txt"]


@needs_root_drop
def test_mknod_of_a_device_is_refused():
    code = (LIBC + "for path, mode in (('/tmp/kmsg', 0o20666), ('/tmp/sda', 0o60666)):\n"
            "    rc = libc.mknod(path.encode(), mode, os.makedev(1, 11))\n    print(rc, ctypes.get_errno())\n"
            "print(os.path.exists('/tmp/kmsg'))")
    assert _errno_of(code) == ["-1", "1", "-1", "1", "False"]  # EPERM


@needs_root_drop
def test_the_kernel_log_cannot_be_written():
    code = ("import os\nfor path in ('/dev/kmsg', '/proc/sysrq-trigger', '/dev/mem'):\n    try:\n"
            "        open(path, 'w').write('<0>sdft sandbox escape')\n        print('wrote')\n"
            "    except OSError as exc:\n        print(type(exc).__name__)\n")
    assert "wrote" not in _errno_of(code)


@needs_root_drop
def test_hostname_cannot_be_changed():
    before = socket.gethostname()
    code = LIBC + "print(libc.sethostname(b'pwned', 5), ctypes.get_errno())\nimport socket\nsocket.sethostname('pwned')"
    result = run_python(code)
    assert result.stdout.split() == ["-1", "1"] and "PermissionError" in result.detail
    assert socket.gethostname() == before


@needs_root_drop
@pytest.mark.skipif(platform.machine() != "x86_64", reason="calls sched_setattr by its x86-64 number")
def test_realtime_scheduling_is_refused():
    code = ("import os\nfor policy in (os.SCHED_FIFO, os.SCHED_RR):\n    try:\n"
            "        os.sched_setscheduler(0, policy, os.sched_param(50))\n        print('realtime')\n"
            "    except PermissionError:\n        print('refused')\n"
            + LIBC + "attr = (ctypes.c_uint32 * 14)(56, 1, 0, 0, 0, 50)\n"  # sched_setattr(SCHED_FIFO, prio 50)
            "print(libc.syscall(314, 0, attr, 0), ctypes.get_errno())\nprint(os.sched_getscheduler(0))")
    assert _errno_of(code) == ["refused", "refused", "-1", "1", "0"]  # still SCHED_OTHER


@needs_root_drop
def test_unix_sockets_outside_cannot_be_reached(visible):
    base, _, python = visible
    servers = []
    for path in (base / "s.sock", Path(tempfile.gettempdir()) / f"sdft-test-{os.getpid()}.sock"):
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        os.chmod(path, 0o777)
        server.listen()
        server.settimeout(0.3)
        servers.append((server, path))
    code = LIBC + ("import struct\nfor path in %r:\n    fd = libc.socket(1, 1, 0)\n"
                   "    addr = struct.pack('=H', 1) + path.encode().ljust(108, b'\\0')\n"
                   "    print(libc.connect(fd, addr, len(addr)), ctypes.get_errno())\n") % [str(p) for _, p in servers]
    try:
        lines = _errno_of(code, python=python)
        assert lines[0] == "-1" and lines[2] == "-1", lines
        for server, _ in servers:
            with pytest.raises(socket.timeout):
                server.accept()
    finally:
        for server, path in servers:
            server.close()
            path.unlink(missing_ok=True)


@needs_root_drop
def test_no_immutable_folder_is_left_behind():
    token = f"keep-{uuid.uuid4().hex}"
    code = (LIBC + f"import fcntl, struct\nos.mkdir({token!r})\nfd = os.open({token!r}, os.O_RDONLY)\n"
            "try:\n    fcntl.ioctl(fd, 0x40086602, struct.pack('i', 0x10))\n    print('immutable')\n"  # FS_IMMUTABLE_FL
            "except OSError as exc:\n    print('refused', exc.errno)\n")
    assert _errno_of(code) == ["refused", "1"]
    assert _left_on_host(token) == []


def _left_on_host(name: str) -> list[Path]:
    """Anything called ``name`` in the host's temp folder or one level below (where sandboxes worked)."""
    top = Path(tempfile.gettempdir())
    return [p for p in [top / name, *top.glob(f"*/{name}")] if p.exists()]


# ------------------------------------------------------------------------------- other processes

@needs_root_drop
def test_the_parents_environment_is_invisible(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-sdft-test-secret")
    code = ("import os\nfound = []\nfor pid in [p for p in os.listdir('/proc') if p.isdigit()] + [str(os.getppid()), "
            f"'1', {str(os.getpid())!r}]:\n    for name in ('environ', 'cmdline'):\n        try:\n"
            "            found.append(open(f'/proc/{pid}/{name}', 'rb').read().decode('latin-1'))\n"
            "        except OSError:\n            pass\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
            "print('\\n'.join(found))")
    result = run_python(code)
    assert result.passed and "sk-sdft-test-secret" not in result.stdout
    # Only itself, and (not as root: a user namespace's root shares the uid) the namespace's init.
    assert set(json.loads(result.stdout.splitlines()[0].replace("'", '"'))) <= {"1", "2"}


@needs_root_drop
def test_privileged_calls_are_refused():
    calls = [("ptrace", (16, 1, 0, 0)), ("mount", (b"none", b"/tmp", b"tmpfs", 0, None)), ("unshare", (0x10000000,)),
             ("setns", (0, 0)), ("umount2", (b"/usr", 2)), ("chroot", (b"/tmp",)), ("setuid", (0,)), ("kill", (1, 9))]
    if platform.machine() == "x86_64":
        calls.append(("syscall", (250, 1, 0)))  # keyctl(KEYCTL_JOIN_SESSION_KEYRING)
    code = LIBC + (f"for name, args in {calls!r}:\n    print(name, getattr(libc, name)(*args), ctypes.get_errno())\n"
                   "print([l for l in open('/proc/self/status') if l.startswith(('CapEff', 'NoNewPrivs', 'Seccomp:'))])\n"
                   "print(os.getuid(), os.getgroups())")
    result = run_python(code)
    assert result.passed, result
    lines = result.stdout.splitlines()
    for line in lines[:len(calls)]:
        name, rc, err = line.split()
        assert rc == "-1" and err in ("1", "3", "22"), line  # EPERM (ESRCH/EINVAL for kill of an invisible init)
    status, ids = lines[len(calls)], lines[len(calls) + 1]
    assert "CapEff:\\t0000000000000000" in status and "NoNewPrivs:\\t1" in status and "Seccomp:\\t2" in status
    assert int(ids.split()[0]) != 0 and ids.endswith("[]")


@needs_root_drop
def test_network_is_unreachable_even_bypassing_python():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (LIBC + "import struct\nfd = libc.socket(2, 1, 0)\nprint(fd, ctypes.get_errno())\n"
            f"addr = struct.pack('=H', 2) + struct.pack('!H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)\n"
            "print(libc.connect(fd, addr, 16))\nimport socket\nsocket.create_connection(('127.0.0.1', %d))" % port)
    try:
        result = run_python(code)
        assert result.stdout.split()[:3] == ["-1", "1", "-1"]  # EPERM: no new sockets at all
        assert result.status == "failed" and "network access is disabled" in result.stderr
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


# ------------------------------------------------------------------------------------ the grading

PROBLEM = {"prompt": "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n",
           "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n"
                   "    assert len(str(candidate(10, 5))) == 2\n",
           "entry_point": "add"}


def _grade(body: str) -> sandbox.SandboxResult:
    return check_program(PROBLEM["prompt"] + body, PROBLEM["test"], PROBLEM["entry_point"], context=PROBLEM["prompt"])


def test_the_honest_solution_passes_and_a_wrong_one_fails():
    assert _grade("    return a + b\n").passed
    assert _grade("    return a - b\n").status == "failed"


@pytest.mark.parametrize("cheat", [
    "    class Yes:\n        def __eq__(self, other): return True\n        def __lt__(self, other): return True\n"
    "        def __sub__(self, other): return self\n        def __abs__(self): return 0\n        def __len__(self): return 2\n"
    "    return Yes()\n",
    "    class Yes(int):\n        def __eq__(self, other): return True\n    return Yes(0)\n",
    "    class Yes(str):\n        def __eq__(self, other): return True\n        def __len__(self): return 2\n    return Yes('x')\n",
])
def test_an_object_that_equals_everything_does_not_pass(cheat):
    assert _grade(cheat).status == "failed"


def test_shadowing_the_builtins_the_tests_use_does_not_pass():
    cheat = "    return 0\ndef abs(x):\n    return 0\ndef len(x):\n    return 2\ndef str(x):\n    return 'xx'\n"
    assert _grade(cheat).status == "failed"


@pytest.mark.parametrize("cheat", [
    "    return None\nimport sys\nsys.exit(0)\n",
    "    return None\nimport os\nos._exit(0)\n",
    "    return None\nimport atexit, os\natexit.register(lambda: os._exit(0))\n",
    "    return None\nimport sys, os\nsys.excepthook = lambda *a: os._exit(0)\n",
    "    return None\nimport os, sys\nprint(open('/proc/self/cmdline').read())\nprint(open(__file__).read())\n"
    "for marker in ('passed', 'PASSED', 'All tests passed', '__sdft_tests_done__'):\n    print(marker)\n"
    "    print(marker, file=sys.stderr)\n",
    "    import os, signal\n    for p in os.listdir('/proc'):\n        if p.isdigit() and int(p) != os.getpid():\n"
    "            try:\n                os.kill(int(p), signal.SIGKILL)\n            except OSError:\n                pass\n    return 3\n",
    "    import threading, os, time\n    threading.Thread(target=lambda: (time.sleep(0.05), os._exit(0))).start()\n"
    "    return None\n",
])
def test_a_forged_end_or_pass_marker_does_not_pass(cheat):
    result = _grade(cheat)
    assert result.status in ("failed", "error") and not result.passed, result


def test_stop_iteration_from_the_program_fails_rather_than_ending_the_tests_loop():
    """Issue 26, item 6: re-raised in the tests' process, a StopIteration ended ``map`` early, and
    ``all(...)`` over nothing is True: a program that raised it on every call passed."""
    tests = "def check(candidate):\n    assert all(map(lambda x: candidate(x, x) == 2 * x, [1, 2, 3]))\n"
    cheat = PROBLEM["prompt"] + "    raise StopIteration\n"
    result = check_program(cheat, tests, "add", context=PROBLEM["prompt"])
    assert result.status == "failed" and "StopIteration" in result.detail, result
    assert check_program(PROBLEM["prompt"] + "    return a + b\n", tests, "add", context=PROBLEM["prompt"]).passed


# ------------------------------------------------------------- a normal user, a kernel without Landlock

SWAP_THE_TESTS = r'''
import os, time
def add(a, b):
    return a - b
def swap():  # the tests' process reads its tests from a pipe: drain it, and write an empty test list
    end = time.time() + 2
    while time.time() < end:
        for p in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:
            try:
                if not open(f'/proc/{p}/cmdline', 'rb').read().endswith(b'harness\0'):
                    continue
                r = os.open(f'/proc/{p}/fd/0', os.O_RDONLY | os.O_NONBLOCK)
                w = os.open(f'/proc/{p}/fd/0', os.O_WRONLY)
            except OSError:
                continue
            try:
                while os.read(r, 1 << 20):
                    pass
            except BlockingIOError:
                pass
            os.write(w, b'{"tests": "", "entry_point": null, "context": ""}')
            return os.close(w)
swap()
'''


@needs_pyseccomp
def test_tests_cannot_be_swapped_by_a_program_of_the_same_uid():
    """Issue 26, item 2: as a normal user the program and the tests share one uid, and without Landlock
    nothing else kept them apart: this program passed 10 times out of 10. It must fail every time, or
    the sandbox must refuse to score, saying why."""
    from sandbox_user import last_json, run_as_user

    code = ("import json, os\nfrom sdft import sandbox\n"
            f"runs = [sandbox.check_program({SWAP_THE_TESTS!r}, {PROBLEM['test']!r}, 'add') for _ in range(6)]\n"
            "iso = sandbox.isolation()\n"
            "print(json.dumps([os.getuid(), sorted(iso.missing), [[r.status, r.detail] for r in runs]]))")
    uid, missing, runs = last_json(run_as_user(code))
    assert uid != 0 and "landlock" in missing
    statuses = {status for status, _ in runs}
    assert statuses == {"failed"} or (statuses == {"error"} and all("separate_tests" in d for _, d in runs)), runs


SNOOP = r'''
import json, os
def attempt(action):
    try:
        return action()
    except OSError as exc:
        return type(exc).__name__
print(json.dumps({"uid": os.getuid(), "shadow": attempt(lambda: open("/etc/shadow").read()[:0]),
                  "processes": attempt(lambda: [p for p in os.listdir("/proc") if p.isdigit()]),
                  "project": attempt(lambda: os.listdir(%(project)r)),
                  "victim": attempt(lambda: open(%(victim)r, "w").write("pwned"))}))
'''


def _snoop_without_namespaces(victim: Path, *, no_landlock: bool, as_root: bool) -> tuple[dict, dict]:
    """What the program saw, and what the run recorded, in permissive mode on a kernel (or container)
    that refuses namespaces."""
    from sandbox_user import ROOT, last_json, run_as_user

    program = SNOOP % {"project": str(ROOT), "victim": str(victim)}
    code = ("import json\nfrom sdft import sandbox\n"
            f"r = sandbox.run_python({program!r})\n"
            "print(json.dumps([r.status, r.stdout, r.mechanisms, sandbox.record()]))")
    status, stdout, mechanisms, record = last_json(run_as_user(code, no_landlock=no_landlock, no_namespaces=True,
                                                               as_root=as_root, env={sandbox.ENV_MODE: "permissive"}))
    assert status == "passed" and set(mechanisms) <= set(record["active"]), (status, stdout)
    assert "namespaces" in record["missing"] and "private_root" in record["missing"]
    return json.loads(stdout), record


@needs_pyseccomp
@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback as root")
def test_the_permissive_fallback_never_runs_model_code_as_root_on_the_hosts_files(visible):
    """Issue 26, item 3: without namespaces, permissive mode ran the program as uid 0 in the host's file
    tree: it read /etc/shadow, the project, ~100 processes, and (without Landlock) overwrote a root-owned
    file, while the record said ``unprivileged``."""
    _, victim, _ = visible
    victim.chmod(0o644)  # root's, writable by root only
    for no_landlock in (False, True):
        seen, record = _snoop_without_namespaces(victim, no_landlock=no_landlock, as_root=True)
        assert seen["uid"] != 0 and "unprivileged" in record["active"]
        assert seen["shadow"] == "PermissionError" and seen["victim"] == "PermissionError"
        assert victim.read_text() == "original"
        if not no_landlock:  # what Landlock hides without a private root
            assert seen["processes"] == seen["project"] == "PermissionError" and "landlock_reads" in record["active"]
    # A normal user's program there runs as that user, on that user's files: never recorded as unprivileged.
    seen, record = _snoop_without_namespaces(Path("/nonexistent/victim"), no_landlock=True, as_root=False)
    assert "unprivileged" not in record["active"] and "sdft's own uid" in record["missing"]["unprivileged"]


FOUR_PROCESSES = r'''
import os, time
pids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = bytearray(120 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(2)
        os._exit(0)
    pids.append(pid)
print("all four held 120 MB" if all(os.waitpid(p, 0)[1] == 0 for p in pids) else "stopped")
'''


@needs_pyseccomp
def test_the_memory_limit_holds_for_all_processes_together_as_a_normal_user():
    """Issue 26, item 5: a normal user has no memory cgroup, and RLIMIT_AS bounds each process alone:
    4 x 400 MB ran under memory_mb=512. The limit is for the whole sandbox."""
    from sandbox_user import last_json, run_as_user

    code = ("import json\nfrom sdft import sandbox\n"
            f"r = sandbox.run_python({FOUR_PROCESSES!r}, memory_mb=200, timeout_s=30)\n"
            "print(json.dumps([r.status, r.detail, r.stdout, sandbox.isolation().missing]))")
    status, detail, stdout, missing = last_json(run_as_user(code, no_landlock=False))
    if "namespaces" in missing:
        pytest.skip(f"no sandbox for a normal user here: {missing['namespaces']}")
    assert "cgroup" in missing and "all four" not in stdout
    assert status == "error" and detail.startswith("out of memory: the sandbox's processes together used"), detail
