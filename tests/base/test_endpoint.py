"""The judge endpoint's HTTP client keeps the API key with the host the user named, and out of messages."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdft.base.endpoint import Transient, check_url, post_json, redact
from sdft.base.errors import ConfigError, SdftError
from sdft.tasks.winrate import EndpointJudge

KEY = "sk-test-secret-0123456789"


class Server:
    """A local HTTP server that records each request's path and headers and answers with ``reply``
    (``(status, headers, payload)``, or None when it wrote to ``handler.wfile`` itself)."""

    def __init__(self, reply):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                answer = reply(self)
                if answer is None:  # the reply function wrote a (broken) reply itself
                    self.close_connection = True
                    return
                status, headers, payload = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST  # urllib turns a redirected POST into a GET (keeping Authorization)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made = []

    def make(reply):
        made.append(Server(reply))
        return made[-1]
    yield make
    for server in made:
        server.close()


def completion(text):
    return 200, {"Content-Type": "application/json"}, json.dumps(
        {"choices": [{"message": {"content": text}}]}).encode()


def test_redirect_to_another_origin_is_not_followed(servers, monkeypatch):
    elsewhere = servers(lambda h: completion("Output (a)"))
    # "localhost" vs 127.0.0.1: another origin, as a redirect to an attacker's host would be.
    target = elsewhere.url.replace("127.0.0.1", "localhost") + "/v1/chat/completions"
    redirector = servers(lambda h: (302, {"Location": target}, b""))
    monkeypatch.setenv("SDFT_JUDGE_API_KEY", KEY)
    judge = EndpointJudge(redirector.url + "/v1", "judge", batch_size=1, retries=0)
    with pytest.raises(SdftError) as info:
        judge.ask(["which is better?"])
    assert "redirected (HTTP 302)" in str(info.value) and "not followed" in str(info.value)
    assert elsewhere.requests == []  # the key never left for the other origin
    assert redirector.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in str(info.value)


def test_plain_http_with_a_key_only_to_loopback(monkeypatch):
    monkeypatch.setenv("SDFT_JUDGE_API_KEY", KEY)
    with pytest.raises(ConfigError, match="refusing to send the API key in clear text"):
        EndpointJudge("http://judge.example.com/v1", "judge", batch_size=1)
    for url in ("http://localhost:8000/v1", "http://127.0.0.1:8000/v1", "http://[::1]:8000/v1",
                "https://judge.example.com/v1"):
        EndpointJudge(url, "judge", batch_size=1)  # accepted
    monkeypatch.delenv("SDFT_JUDGE_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    EndpointJudge("http://judge.example.com/v1", "judge", batch_size=1)  # no key, nothing to leak


def test_credentials_in_the_url_are_refused_and_never_echoed():
    url = f"https://user:{KEY}@judge.example.com/v1?api_key={KEY}"
    with pytest.raises(ConfigError) as info:
        check_url(url, has_key=False)
    assert "credentials inside the URL are refused" in str(info.value)
    assert KEY not in str(info.value) and "user" not in str(info.value)
    assert redact(url) == "https://judge.example.com/v1?api_key=***"


def test_server_errors_do_not_echo_the_key(servers, monkeypatch):
    # A server (or proxy) that echoes the request headers in its error body.
    echo = servers(lambda h: (400, {}, f"bad request, got Authorization: {h.headers['Authorization']}".encode()))
    with pytest.raises(SdftError) as info:
        post_json(echo.url + "/v1/chat/completions", {"x": 1}, api_key=KEY, retries=0)
    assert "HTTP 400" in str(info.value) and KEY not in str(info.value) and "***" in str(info.value)


def test_rate_limits_and_server_errors_are_retried_the_given_number_of_times(servers, monkeypatch):
    import sdft.base.endpoint

    monkeypatch.setattr(sdft.base.endpoint.time, "sleep", lambda seconds: None)
    script = [(429, {}, b"slow down"), (503, {}, b"busy")]
    flaky = servers(lambda h: script.pop(0) if script else completion("fine"))
    assert post_json(flaky.url + "/v1/chat/completions", {"x": 1}, retries=2)["choices"]
    assert len(flaky.requests) == 3
    down = servers(lambda h: (502, {}, b"bad gateway"))
    with pytest.raises(SdftError, match="HTTP 502"):
        post_json(down.url + "/v1/chat/completions", {"x": 1}, retries=2)
    assert len(down.requests) == 3  # the first try and two retries


def test_a_good_endpoint_answers(servers, monkeypatch):
    good = servers(lambda h: completion("Output (b)"))
    monkeypatch.setenv("SDFT_JUDGE_API_KEY", KEY)
    judge = EndpointJudge(good.url + "/v1", "judge", batch_size=1)
    assert judge.ask(["q"]) == ["Output (b)"]
    assert good.requests[0]["path"] == "/v1/chat/completions"
    assert json.loads(good.requests[0]["body"])["model"] == "judge"
    assert KEY not in judge.key and KEY not in judge.description


def test_cli_refuses_a_key_in_the_url_before_writing_anything(tmp_path, capsys, monkeypatch):
    from sdft.base.provenance import command_line
    from sdft.cli import main

    out = tmp_path / "eval"
    argv = ["eval", "--tasks", "winrate", "--data", f"winrate={tmp_path / 'w.json'}", "--judge",
            f"https://me:{KEY}@judge.example.com/v1", "--judge-model", "m", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "credentials inside the URL are refused" in err and KEY not in err
    assert not out.exists()  # no lock file, no results: nothing could carry the key
    monkeypatch.setattr("sys.argv", ["sdft", *argv])
    assert KEY not in command_line() and "https://***@judge.example.com/v1" in command_line()
    # A key in the query (Azure Functions' ?code=, a SAS sig=) is hidden too, in any form of the flag.
    monkeypatch.setattr("sys.argv", ["sdft", "eval", f"--judge=https://fn.example.net/v1?code={KEY}&v=2",
                                     "--endpoint", f"https://h.example.net/v1?sig={KEY}"])
    assert KEY not in command_line()
    assert "--judge=https://fn.example.net/v1?code=***&v=***" in command_line()
    assert "https://h.example.net/v1?sig=***" in command_line()


# ----------------------------------------------------------------------------------- hostile servers
# Each writes a broken reply by hand; all stop on their own within seconds, so that a client which keeps
# reading (the code before these limits) fails the test instead of hanging it.

def _write(handler, data: bytes) -> bool:
    try:
        handler.wfile.write(data)
        handler.wfile.flush()
        return True
    except OSError:  # the client hung up: what a capped or timed-out client does
        return False


def endless(handler, declared=None, limit=256 * 2**20):
    """A 200 reply whose body never ends (stops after ``limit`` bytes), or that announces ``declared`` bytes."""
    length = f"Content-Length: {declared}\r\n" if declared else ""
    if not _write(handler, f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}\r\n".encode()):
        return
    sent, block = 0, b"[" * 65536
    while sent < limit and _write(handler, block):
        sent += len(block)
    handler.server.sent = sent


def drip(handler, phase, seconds=6.0, every=0.2):
    """One byte every ``every`` s, in the headers or in the body, for ``seconds`` in all."""
    head = b"HTTP/1.1 200 OK\r\n"
    if phase == "body":
        head += b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    if not _write(handler, head):
        return
    end, pause = time.monotonic() + seconds, threading.Event()  # not time.sleep: the tests stub it out
    while time.monotonic() < end and _write(handler, b"X" if phase == "headers" else b" "):
        pause.wait(every)


def short(handler, chunked=False):
    """A reply that stops before its end (fewer bytes than Content-Length, or mid-chunk) and closes."""
    if chunked:
        _write(handler, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n{\"choices\": ")
    else:
        _write(handler, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"choices\": ")


def test_a_reply_larger_than_the_cap_is_cut(servers):
    big = servers(lambda h: endless(h))
    started = time.monotonic()
    with pytest.raises(SdftError, match="larger than 1 MiB") as info:
        post_json(big.url + "/v1/chat/completions", {"x": 1}, retries=0, max_bytes=2**20)
    assert not isinstance(info.value, Transient) and "\n" not in str(info.value)  # not retried: it would recur
    assert time.monotonic() - started < 10
    announced = servers(lambda h: endless(h, declared=10 * 2**30, limit=0))
    with pytest.raises(SdftError, match="announced a reply of 10240 MiB"):
        post_json(announced.url + "/v1/chat/completions", {"x": 1}, retries=0)  # the default cap


def test_the_reply_cap_reads_at_most_one_byte_past_it():
    from sdft.base.endpoint import _read_capped

    class Endless:
        length, taken = None, 0

        def read(self, n):
            self.taken += n
            return b"x" * n

    body = Endless()
    with pytest.raises(SdftError, match="larger than 1000 bytes"):
        _read_capped(body, 1000, "endpoint")
    assert body.taken == 1001


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_slow_drip_is_cut_at_the_deadline(servers, monkeypatch, phase):
    """Every byte arrives well within the socket timeout; the whole request still ends at its deadline."""
    import sdft.base.endpoint

    monkeypatch.setattr(sdft.base.endpoint.time, "sleep", lambda seconds: None)
    slow = servers(lambda h: drip(h, phase))
    started = time.monotonic()
    with pytest.raises(Transient, match="no complete reply within 1 s"):
        post_json(slow.url + "/v1/chat/completions", {"x": 1}, timeout=1.0, retries=1)
    assert time.monotonic() - started < 4  # two attempts of one second each
    assert len(slow.requests) == 2


@pytest.mark.parametrize("chunked", [False, True])
def test_a_short_reply_is_a_retryable_one_line_error(servers, monkeypatch, chunked):
    import sdft.base.endpoint

    monkeypatch.setattr(sdft.base.endpoint.time, "sleep", lambda seconds: None)
    script = [lambda h: short(h, chunked)]
    flaky = servers(lambda h: script.pop(0)(h) if script else completion("fine"))
    assert post_json(flaky.url + "/v1/chat/completions", {"x": 1}, retries=1)["choices"]
    broken = servers(lambda h: short(h, chunked))
    with pytest.raises(Transient, match="closed the connection in the middle of its reply") as info:
        post_json(broken.url + "/v1/chat/completions", {"x": 1}, retries=0)
    assert "\n" not in str(info.value)


def _resolving(monkeypatch, table):
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if host in table:
            if table[host] is None:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (a, 0) if ":" not in a else (a, 0, 0, 0)) for a in table[host]]
        return real(host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_localhost_names_count_as_loopback_only_when_they_resolve_there(monkeypatch):
    _resolving(monkeypatch, {"judge.localhost": ["127.0.0.1", "::1"], "evil.localhost": ["203.0.113.7"],
                             "mixed.localhost": ["127.0.0.1", "203.0.113.7"], "nowhere.localhost": None,
                             "localhost": ["198.51.100.2"]})
    check_url("http://judge.localhost:8000/v1", has_key=True)
    for host in ("evil.localhost", "mixed.localhost", "nowhere.localhost", "localhost"):
        with pytest.raises(ConfigError, match="refusing to send the API key in clear text") as info:
            check_url(f"http://{host}:8000/v1", has_key=True)
        assert host in str(info.value)
        check_url(f"http://{host}:8000/v1", has_key=False)  # no key: nothing to leak
        check_url(f"https://{host}:8000/v1", has_key=True)


def test_the_key_goes_out_only_over_a_loopback_connection(servers, monkeypatch):
    """Checked again where it counts, on the connected socket: a name that resolved to loopback when the
    URL was checked but to another host when connecting (or a proxy in between) gets no request."""
    import sdft.base.endpoint

    good = servers(lambda h: completion("Output (a)"))
    monkeypatch.setenv("SDFT_JUDGE_API_KEY", KEY)
    judge = EndpointJudge(good.url + "/v1", "judge", batch_size=1, retries=0)
    monkeypatch.setattr(sdft.base.endpoint, "check_url", lambda url, has_key: url)  # passed before the change
    monkeypatch.setattr(sdft.base.endpoint, "_loopback_ip", lambda address: False)  # "connected elsewhere"
    with pytest.raises(SdftError, match="not a loopback address") as info:
        judge.ask(["q"])
    assert good.requests == [] and KEY not in str(info.value)


def test_a_query_string_stays_at_the_end_of_the_judge_url(servers):
    judge = EndpointJudge("http://judge.example.com/v1?api-version=2024-01/", "judge", batch_size=1)
    assert judge.url == "http://judge.example.com/v1/chat/completions?api-version=2024-01/"
    full = EndpointJudge("https://h.example.com/v1/chat/completions/?x=1", "judge", batch_size=1)
    assert full.url == "https://h.example.com/v1/chat/completions?x=1"
    good = servers(lambda h: completion("Output (b)"))
    assert EndpointJudge(good.url + "/v1?x=1", "judge", batch_size=1).ask(["q"]) == ["Output (b)"]
    assert good.requests[0]["path"] == "/v1/chat/completions?x=1"
