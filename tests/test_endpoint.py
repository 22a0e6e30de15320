"""The judge endpoint's HTTP client keeps the API key with the host the user named, and out of messages."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdft.endpoint import check_url, post_json, redact
from sdft.errors import ConfigError, SdftError
from sdft.tasks.winrate import EndpointJudge

KEY = "sk-test-secret-0123456789"


class Server:
    """A local HTTP server that records each request's path and headers and answers with ``reply``."""

    def __init__(self, reply):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, headers, payload = reply(self)
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
    import sdft.endpoint

    monkeypatch.setattr(sdft.endpoint.time, "sleep", lambda seconds: None)
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
    from sdft.cli import main
    from sdft.provenance import command_line

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


def test_a_query_string_stays_at_the_end_of_the_judge_url(servers):
    judge = EndpointJudge("http://judge.example.com/v1?api-version=2024-01/", "judge", batch_size=1)
    assert judge.url == "http://judge.example.com/v1/chat/completions?api-version=2024-01/"
    full = EndpointJudge("https://h.example.com/v1/chat/completions/?x=1", "judge", batch_size=1)
    assert full.url == "https://h.example.com/v1/chat/completions?x=1"
    good = servers(lambda h: completion("Output (b)"))
    assert EndpointJudge(good.url + "/v1?x=1", "judge", batch_size=1).ask(["q"]) == ["Output (b)"]
    assert good.requests[0]["path"] == "/v1/chat/completions?x=1"
