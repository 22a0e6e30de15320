"""The code that runs inside the sandbox. The sandbox sees no sdft files: its *text* is passed on a
pipe to ``python -I -B -u -c LOADER MODE`` (see ``sdft.sandbox.host``).

``run``: execute ``main.py`` as the ``__main__`` module behind an audit hook that refuses sockets.

``server`` and ``harness`` grade a program against tests so that nothing the program does can forge
the verdict. The program runs in one process (``server``, in a PID namespace of its own where the tests'
process does not exist) and the tests in another (``harness``: not dumpable; as root, another uid).
The tests call the program's functions through proxies; each call crosses a pipe as JSON, and the result comes back as *plain data only* (numbers, fractions, decimals,
strings, bytes, lists, tuples, dicts, sets, ranges; generators and numpy values are converted first),
rebuilt by the harness from that data. An object whose ``__eq__`` always says True never reaches the tests, and whatever the
program prints or does to its own process changes nothing: the verdict is the harness's exit status,
which the sandbox host reads from the kernel.
"""

import builtins
import json
import os
import sys

_BLOCKED = frozenset({"socket.__new__", "socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg",
                      "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"})
_DEPTH = 500


def _guard(event, args, blocked=_BLOCKED):
    if event in blocked:
        raise PermissionError("network access is disabled in the sdft sandbox (" + event + ")")


def _load_program():
    """``main.py`` as a real ``__main__`` module (so pickle finds its classes), without our names."""
    import types

    module = types.ModuleType("__main__")
    module.__file__, module.__builtins__ = "main.py", builtins
    sys.modules["__main__"], sys.argv = module, ["main.py"]
    with open("main.py", "rb") as f:
        code = compile(f.read(), "main.py", "exec")
    exec(code, module.__dict__)
    return module


# ----------------------------------------------------------------------------------------- plain data

def _encode(value, ref=None, depth=0):
    """A JSON-able tagged form of a plain value; anything else raises TypeError."""
    if depth > _DEPTH:
        raise ValueError("value nested too deeply")
    if value is None or value is True or value is False:
        return value
    if ref is not None and ref(value) is not None:
        return {"ref": ref(value)}
    down = (lambda items: [_encode(v, ref, depth + 1) for v in items])
    for kind, tag, convert in _SCALARS:
        if isinstance(value, kind):
            return {tag: convert(value)} if tag else convert(value)
    if isinstance(value, range):
        return {"r": [value.start, value.stop, value.step]}
    exact = _exact_number(value)
    if exact is not None:
        return exact
    for kind, tag in ((list, "l"), (tuple, "t"), (set, "set"), (frozenset, "fs")):
        if isinstance(value, kind):
            return {tag: down(value)}
    if isinstance(value, dict):
        return {"d": [[_encode(k, ref, depth + 1), _encode(v, ref, depth + 1)] for k, v in value.items()]}
    import collections.abc as abc

    if isinstance(value, (abc.Iterator, abc.KeysView, abc.ValuesView, abc.ItemsView)):
        return {"l": down(value)}
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return _encode(value.tolist(), ref, depth + 1)
    raise TypeError(f"a {type(value).__name__} cannot be passed between the program and its tests "
                    "(only plain values can)")


def _exact_number(value):
    """Fractions and decimals, when their modules are loaded (the program can only return one then)."""
    fractions, decimal = sys.modules.get("fractions"), sys.modules.get("decimal")
    if fractions is not None and isinstance(value, fractions.Fraction):
        return {"fr": [int.__repr__(int(value.numerator)), int.__repr__(int(value.denominator))]}
    if decimal is not None and isinstance(value, decimal.Decimal):
        return {"dec": decimal.Decimal.__str__(value)}
    return None


_SCALARS = ((bool, None, bool), (int, "i", int.__repr__), (float, "f", float.__repr__),
            (complex, "c", lambda c: [float.__repr__(c.real), float.__repr__(c.imag)]),
            (str, None, str.__str__), (bytes, "b", lambda b: bytes(b).hex()), (bytearray, "ba", lambda b: b.hex()))
_CONTAINERS = {"l": list, "t": tuple, "set": set, "fs": frozenset}


def _decode(data, refs=None, depth=0):
    """The value back from its tagged form, strictly: exact builtin types only."""
    if depth > _DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or data is True or data is False or type(data) is str:
        return data
    if type(data) is not dict or len(data) != 1:
        raise ValueError(f"malformed value: {str(data)[:80]}")
    (tag, x), = data.items()
    if tag in _CONTAINERS and type(x) is list:
        return _CONTAINERS[tag](_decode(v, refs, depth + 1) for v in x)
    if tag == "d" and type(x) is list and all(type(p) is list and len(p) == 2 for p in x):
        return {_decode(k, refs, depth + 1): _decode(v, refs, depth + 1) for k, v in x}
    if tag == "c" and type(x) is list and len(x) == 2:
        return complex(float(x[0]), float(x[1]))
    if tag == "r" and type(x) is list and len(x) == 3 and all(type(v) is int for v in x):
        return range(*x)
    if tag == "ref" and refs is not None and type(x) is str:
        return refs[x]
    if type(x) is str and tag in ("i", "f", "b", "ba"):
        return {"i": int, "f": float, "b": bytes.fromhex, "ba": lambda h: bytearray.fromhex(h)}[tag](x)
    if tag == "fr" and type(x) is list and len(x) == 2 and all(type(v) is str for v in x):
        from fractions import Fraction

        return Fraction(int(x[0]), int(x[1]))
    if tag == "dec" and type(x) is str:
        from decimal import Decimal

        return Decimal(x)
    raise ValueError(f"malformed value: {str(data)[:80]}")


class _Channel:
    def __init__(self, read_fd: int, write_fd: int):
        self.reader, self.writer = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")

    def send(self, message) -> None:
        self.writer.write(json.dumps(message).encode() + b"\n")
        self.writer.flush()

    def receive(self):
        line = self.reader.readline()
        if not line:
            raise EOFError("the program ended before its tests finished")
        return json.loads(line)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__


# -------------------------------------------------------------------------------------------- serve

def serve():
    channel = _Channel(3, 4)
    sys.addaudithook(_guard)
    try:
        module = _load_program()
    except BaseException as exc:  # SystemExit too: the tests must not start
        channel.send({"fatal": _describe(exc)})
        raise
    names = vars(module)
    channel.send({"ready": [k for k, v in names.items() if callable(v) and not k.startswith("__")]})
    while True:
        try:
            request = channel.receive()
        except EOFError:
            return
        try:
            args = _decode(request["args"], names)
            result = names[request["name"]](*args, **_decode(request["kwargs"], names))
            reply = {"ok": _encode(result)}
        except BaseException as exc:  # an exception of the program's function is an answer, too
            reply = {"error": [type(exc).__name__, str(exc)[:500]]}
        channel.send(reply)


# ------------------------------------------------------------------------------------------ harness

class _Proxy:
    """Stands for one of the program's functions in the tests' process."""

    def __init__(self, channel: _Channel, name: str):
        self._channel, self._name = channel, name

    def __call__(self, *args, **kwargs):
        ref = (lambda v: v._name if type(v) is _Proxy else None)
        self._channel.send({"name": self._name, "args": _encode(list(args), ref),
                            "kwargs": _encode(kwargs, ref)})
        reply = self._channel.receive()
        if type(reply) is dict and "ok" in reply:
            return _decode(reply["ok"])
        kind, message = reply["error"]
        exc = getattr(builtins, str(kind), None)
        # StopIteration would end the tests' own loop early (``all(map(candidate, ...))`` is then True):
        # raised by the program, it is an error like any exception that is not the tests' to interpret.
        if isinstance(exc, type) and issubclass(exc, Exception) and not issubclass(exc, (StopIteration,
                                                                                         StopAsyncIteration)):
            raise exc(message)
        raise RuntimeError(f"{kind}: {message}")


def harness():
    import ctypes
    import traceback

    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/<pid>/mem for the program
    spec = json.loads(sys.stdin.read())
    sys.addaudithook(_guard)
    try:
        _run_tests(spec, _Channel(3, 4))
    except BaseException as exc:  # the verdict is our exit status; the detail goes to the host
        traceback.print_exc()
        where = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "tests"]
        detail = _describe(exc) + (f" (tests line {where[-1].lineno})" if where else "")
        os.write(5, detail.encode("utf-8", "replace")[:1000])
        os._exit(1)
    os._exit(0)


def _run_tests(spec: dict, channel: _Channel) -> None:
    hello = channel.receive()
    if "fatal" in hello:
        raise RuntimeError(f"the program failed before its tests ran: {hello['fatal']}")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(spec["context"], "context", "exec"), namespace)  # trusted helpers (the prompt, imports)
    # Proxies only for what the tests use and nothing else defines: a program that defines ``abs`` or
    # ``len`` must not replace the builtins the tests compare with.
    wanted = _free_names(spec["tests"]) - set(namespace) - set(dir(builtins))
    namespace.update((n, _Proxy(channel, n)) for n in hello["ready"] if type(n) is str and n in wanted)
    entry = spec.get("entry_point")
    if entry:
        namespace[entry] = _Proxy(channel, entry)  # replaces the prompt's stub
    exec(compile(spec["tests"], "tests", "exec"), namespace)
    if entry:
        namespace["check"](namespace[entry])


def _free_names(source: str) -> set:
    """Names the tests read but never bind."""
    import ast

    read, bound = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return read - bound

if __name__ == "__main__":
    sys.set_int_max_str_digits(0)  # big integers cross the pipe as text
    mode = sys.argv[1] if len(sys.argv) > 1 else "run"
    del sys.argv[1:]
    if mode == "run":
        sys.addaudithook(_guard)
        _load_program()
    else:
        {"server": serve, "harness": harness}[mode]()
