"""A TEST DOUBLE OpenAI-compatible server: real HTTP on 127.0.0.1, canned completions, scripted failures.

For the openai backend's transport rules (concurrency, retries, errors, keys, redirects) without a model.
Real-server agreement is tested against ``vllm serve`` in test_vllm.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    """``url`` is the base (``http://127.0.0.1:PORT/v1``). ``script`` answers POSTs in order: an int is an
    HTTP status to fail with, ``"garbage"`` a non-JSON body, ``"empty"`` JSON without choices, a
    ``("redirect", URL)`` a 307 there, ``("huge", N)`` a body of N bytes without a length, ``"short"`` fewer
    bytes than the Content-Length before closing, ``("drip", SECONDS)`` one byte every 0.1 s of the body
    for SECONDS, ``"die"`` the server's end (as ``kill()``); when the script runs out, requests succeed.

    ``kill()`` is what ``kill -9`` of a server does to its clients: every request in flight, and any that
    still gets through, is closed without a reply, and then the port refuses connections."""

    def __init__(self, model: str = "stub", delay: float = 0.0, script=None):
        self.model, self.delay, self.script = model, delay, list(script or [])
        self.requests: list[dict] = []  # {"path", "headers", "body"} per request
        self.in_flight = self.max_in_flight = 0
        self.dead = False
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def _reply(self, status: int, payload, headers=None):
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting (its deadline): nothing to tell it

            def _broken(self, kind: str, amount: float):
                """What a broken or hostile server sends, by hand; stops when the client hangs up."""
                self.close_connection = True
                length = "" if kind == "huge" else "Content-Length: 1000\r\n"
                try:
                    self.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}\r\n".encode())
                    if kind == "short":
                        self.wfile.write(b'{"choices": ')
                    elif kind == "huge":
                        for _ in range(0, int(amount), 65536):
                            self.wfile.write(b" " * 65536)
                    else:  # drip
                        end, pause = time.monotonic() + amount, threading.Event()
                        while time.monotonic() < end:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            pause.wait(0.1)
                except OSError:
                    pass  # the client stopped reading: what a capped or timed-out client does

            def do_GET(self):
                if stub.dead:
                    return self._hang_up()
                stub._record(self, None)
                self._reply(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub._record(self, body)
                with stub.lock:
                    step = stub.script.pop(0) if stub.script else None
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                if step == "die":
                    stub.kill()
                time.sleep(stub.delay)
                with stub.lock:  # counted down before answering: the client may send its next one at once
                    stub.in_flight -= 1
                if stub.dead:
                    return self._hang_up()
                self._answer(step, body)

            def _hang_up(self):
                """Closed without a reply: what the kernel does to a killed server's connections."""
                self.close_connection = True

            def _answer(self, step, body):
                if isinstance(step, int):
                    self._reply(step, {"error": {"message": f"scripted {step}"}})
                elif step == "garbage":
                    self._reply(200, b"<html>proxy error</html>")
                elif step == "empty":
                    self._reply(200, {"object": "text_completion"})
                elif isinstance(step, tuple) and step[0] == "redirect":
                    self._reply(307, {}, {"Location": step[1]})
                elif step == "short" or isinstance(step, tuple) and step[0] in ("huge", "drip"):
                    self._broken(*(step if isinstance(step, tuple) else (step, 0)))
                else:
                    self._reply(200, stub.completion(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def kill(self) -> None:
        """The server dies: no reply from now on, and the port closes (connections refused) shortly."""
        with self.lock:
            if self.dead:
                return
            self.dead = True
        threading.Thread(target=self._close, daemon=True).start()  # shutdown() waits for the serving loop

    def _close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _record(self, handler, body):
        with self.lock:
            self.requests.append({"path": handler.path, "headers": dict(handler.headers), "body": body})

    @staticmethod
    def completion(body: dict) -> dict:
        """Deterministic text from the prompt and seed; ``length`` when it would exceed max_tokens."""
        prompt = body["prompt"]
        words = f"answer to {len(prompt)} {prompt[-1] if prompt else ''} seed {body['seed'] % 1000}".split()
        cut = words[:body["max_tokens"]]
        return {"object": "text_completion", "model": body["model"],
                "choices": [{"index": 0, "text": " ".join(cut),
                             "finish_reason": "length" if len(cut) < len(words) else "stop"}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(cut)}}

    def posts(self) -> list[dict]:
        return [r for r in self.requests if r["body"] is not None]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
