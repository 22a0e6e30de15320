"""The openai backend's transport rules, against a stub HTTP server (agreement with vLLM: test_vllm.py)."""

from __future__ import annotations

import json

import pytest
from openai_stub import StubServer

from sdft.base.errors import ConfigError, SdftError
from sdft.generation import GenerationParams, load_backend
from sdft.generation.prompts import row_seeds

PROMPTS = [f"Question number {i}?" for i in range(10)]


def _backend(urls, **options):
    return load_backend("openai", "stub", None, progress=False, endpoint=urls, backoff=0.01, **options)


def test_order_seeds_and_bounded_concurrency():
    with StubServer(delay=0.05) as server:
        backend = _backend(server.url, max_concurrency=3)
        params = GenerationParams(max_new_tokens=16, temperature=0.7, top_p=0.9, top_k=20, seed=7)
        out = backend.generate(PROMPTS, params)
    bodies = {b["prompt"]: b for b in (r["body"] for r in server.posts())}
    assert [c.text for c in out] == [StubServer.completion(bodies[p])["choices"][0]["text"] for p in PROMPTS]
    assert [bodies[p]["seed"] for p in PROMPTS] == row_seeds(PROMPTS, 7)  # the HF backend's per-prompt seeds
    assert bodies[PROMPTS[0]]["top_k"] == 20 and bodies[PROMPTS[0]]["temperature"] == 0.7
    assert 1 < server.max_in_flight <= 3


def test_logit_bias_is_sent_as_openai_names_it_and_only_when_set():
    with StubServer() as server:
        backend = _backend(server.url)
        backend.generate(["a"], GenerationParams(max_new_tokens=1, logit_bias=((15, -100.0), (7, 2.5))))
        backend.generate(["b"], GenerationParams(max_new_tokens=1))
    bodies = {r["body"]["prompt"]: r["body"] for r in server.posts()}
    assert bodies["a"]["logit_bias"] == {"15": -100.0, "7": 2.5} and "logit_bias" not in bodies["b"]


def test_finish_reasons_and_token_counts():
    with StubServer() as server:
        out = _backend(server.url).generate(["a", "b"], GenerationParams(max_new_tokens=2))
    assert {c.finish_reason for c in out} == {"length"} and all(c.completion_tokens == 2 for c in out)
    with StubServer() as server:
        out = _backend(server.url).generate(["a"], GenerationParams(max_new_tokens=50))
    assert out[0].finish_reason == "stop" and out[0].prompt_tokens == 1


def test_token_ids_from_the_server_are_decoded_here(tiny_model, monkeypatch):
    """With a local tokenizer, prompts go out as token ids and the answer's token ids are decoded as the
    in-process backends decode them (vLLM's return_token_ids), not taken from the server's text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    answer_ids = tokenizer.encode("hello world", add_special_tokens=False)
    plain = StubServer.completion

    def with_ids(body):
        reply = plain(body)
        reply["choices"][0].update(text="not what the tokens say", token_ids=answer_ids)
        return reply
    monkeypatch.setattr(StubServer, "completion", staticmethod(with_ids))
    with StubServer() as server:
        out = _backend(server.url, tokenizer=str(tiny_model)).generate(["Say hi."], GenerationParams(max_new_tokens=8))
    body = server.posts()[0]["body"]
    assert isinstance(body["prompt"], list) and body["return_token_ids"] is True
    assert out[0].text == tokenizer.decode(answer_ids, skip_special_tokens=True)


def test_requests_spread_over_endpoints():
    with StubServer() as one, StubServer() as two:
        out = _backend(f"{one.url},{two.url}").generate(PROMPTS, GenerationParams(max_new_tokens=8))
    assert len(out) == len(PROMPTS) and len(one.posts()) == len(two.posts()) == len(PROMPTS) // 2


def test_transient_errors_are_retried_then_reported_in_one_line():
    with StubServer(script=[503, 429]) as server:
        out = _backend(server.url, max_concurrency=1).generate(["x"], GenerationParams(max_new_tokens=4))
    assert out[0].text and len(server.posts()) == 3
    with StubServer(script=[503] * 5) as server:
        with pytest.raises(SdftError, match="failed after 3 attempt") as err:
            _backend(server.url, retries=2, max_concurrency=1).generate(["x"], GenerationParams())
    assert "\n" not in str(err.value) and "HTTP 503" in str(err.value)


def test_a_retry_moves_on_to_the_next_endpoint():
    # The first server fails every request; each prompt's retry lands on the second one and succeeds.
    with StubServer(script=[503] * 4) as failing, StubServer() as healthy:
        out = _backend(f"{failing.url},{healthy.url}", retries=1, max_concurrency=1).generate(
            PROMPTS[:4], GenerationParams(max_new_tokens=4))
    assert all(c.text for c in out) and len(healthy.posts()) == 4 and len(failing.posts()) == 2


def test_client_errors_and_garbage_are_not_retried():
    for step, message in ((400, "HTTP 400"), ("garbage", "not JSON"), ("empty", "not a completion")):
        with StubServer(script=[step]) as server:
            with pytest.raises(SdftError, match=message):
                _backend(server.url, max_concurrency=1).generate(["x"], GenerationParams())
        assert len(server.posts()) == 1


def test_timeout_is_retried():
    with StubServer(delay=1.0) as server:
        with pytest.raises(SdftError, match="timed out|failed after 2"):
            _backend(server.url, timeout=0.2, retries=1).generate(["x"], GenerationParams())
    assert len(server.posts()) == 2


def test_a_reply_over_the_size_cap_stops_the_job_in_one_line():
    with StubServer(script=[("huge", 4 * 2**20)]) as server:
        with pytest.raises(SdftError, match="larger than 1 MiB.*max_reply_bytes") as err:
            _backend(server.url, max_concurrency=1, max_reply_bytes=2**20).generate(["x"], GenerationParams())
    assert len(server.posts()) == 1 and "\n" not in str(err.value)  # not retried: it would come again
    with StubServer(script=[("huge", 2**20)]) as server:  # the default cap (32 MiB) reads it: not JSON
        with pytest.raises(SdftError, match="not JSON"):
            _backend(server.url, max_concurrency=1).generate(["x"], GenerationParams())


def test_a_slow_drip_is_cut_at_the_request_deadline_and_retried_a_bounded_number_of_times():
    import time

    with StubServer(script=[("drip", 5.0)] * 2) as server:
        backend = _backend(server.url, timeout=1.0, retries=1, max_concurrency=1)
        started = time.monotonic()
        with pytest.raises(SdftError, match="failed after 2 attempt.*no complete reply within 1 s"):
            backend.generate(["x"], GenerationParams())
        assert time.monotonic() - started < 4  # two one-second attempts and a short backoff
    assert len(server.posts()) == 2


def test_a_reply_cut_short_is_retried_as_a_connection_error():
    with StubServer(script=["short"]) as server:
        out = _backend(server.url, max_concurrency=1).generate(["x"], GenerationParams(max_new_tokens=4))
    assert out[0].text and len(server.posts()) == 2
    with StubServer(script=["short"] * 2) as server:
        with pytest.raises(SdftError, match="failed after 2 attempt.*in the middle of its reply") as err:
            _backend(server.url, retries=1, max_concurrency=1).generate(["x"], GenerationParams())
    assert "\n" not in str(err.value)


def test_a_query_string_stays_after_the_path():
    with StubServer() as server:
        _backend(server.url + "/?api-version=7", max_concurrency=1).generate(["x"], GenerationParams(max_new_tokens=2))
    assert [r["path"] for r in server.requests] == ["/v1/models?api-version=7", "/v1/completions?api-version=7"]
    with StubServer() as server:
        _backend(server.url + "/completions?a=1").generate(["x"], GenerationParams(max_new_tokens=2))
    assert [r["path"] for r in server.requests] == ["/v1/models?a=1", "/v1/completions?a=1"]


def test_bad_timeout_or_cap_is_refused():
    for options in ({"timeout": 0}, {"timeout": float("inf")}, {"max_reply_bytes": 0}):
        with pytest.raises(ConfigError, match="positive number of seconds"):
            _backend("http://127.0.0.1:9/v1", **options)


def test_server_down_or_wrong_model_fails_before_work():
    with StubServer() as server:
        url = server.url
    with pytest.raises(SdftError, match="unreachable.*is the server running"):
        _backend(url)
    with StubServer(model="other") as server:
        with pytest.raises(ConfigError, match="serves other, not 'stub'"):
            _backend(server.url)
        assert _backend(server.url, served_model="other").model_name == "other"


def test_api_key_from_environment_only(monkeypatch):
    monkeypatch.setenv("SDFT_API_KEY", "sk-test-secret")
    with StubServer() as server:
        _backend(server.url).generate(["x"], GenerationParams(max_new_tokens=2))
    assert {r["headers"].get("Authorization") for r in server.requests} == {"Bearer sk-test-secret"}
    with pytest.raises(ConfigError, match="clear text"):
        _backend("http://10.1.2.3:8000/v1")
    monkeypatch.setenv("MY_SERVER_KEY", "sk-named-variable")  # api_key_env picks the variable, and only it
    with StubServer() as server:
        _backend(server.url, api_key_env="MY_SERVER_KEY").generate(["x"], GenerationParams(max_new_tokens=2))
    assert {r["headers"].get("Authorization") for r in server.requests} == {"Bearer sk-named-variable"}
    with pytest.raises(ConfigError, match="environment variable"):
        _backend("https://example.invalid/v1", api_key="sk-visible")


def test_redirects_are_not_followed_so_the_key_stays(monkeypatch):
    monkeypatch.setenv("SDFT_API_KEY", "sk-test-secret")
    with StubServer() as elsewhere:
        with StubServer(script=[("redirect", elsewhere.url + "/completions")]) as server:
            with pytest.raises(SdftError, match="redirected") as err:
                _backend(server.url, max_concurrency=1).generate(["x"], GenerationParams())
        assert elsewhere.posts() == [] and "sk-test-secret" not in str(err.value)


def test_distill_through_a_failing_server_keeps_finished_records(tmp_path, monkeypatch):
    """A server that breaks mid-job: one clear error, finished chunks kept, the rerun completes exactly once."""
    from sdft.distill.config import DistillConfig
    from sdft.distill.stage import distill

    monkeypatch.setenv("SDFT_API_KEY", "sk-never-in-records")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": f"{i}."}) + "\n" for i in range(10)))
    out = tmp_path / "out"

    def run(url):
        return distill(DistillConfig(data=str(data), out=str(out), model="stub", backend="openai", endpoint=[url],
                                     batch_size=1, max_new_tokens=8, progress=False,
                                     backend_option=["request_chunk=4", "max_concurrency=1", "retries=0"]))

    with StubServer(script=[None] * 6 + [400] * 10) as server:
        with pytest.raises(SdftError, match="HTTP 400"):
            run(server.url)
    done = [json.loads(line)["id"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert len(done) == 4  # the first chunk of four; the broken chunk wrote nothing
    with StubServer() as server:
        stats = run(server.url)
    assert stats["examples"] == 10 and len(server.posts()) == 6
    records = [json.loads(line) for line in (out / "distilled.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in records] == [f"Say {i}." for i in range(10)]
    for name in ("run.json", "stats.json", "progress.jsonl", "distilled.jsonl"):
        assert "sk-never-in-records" not in (out / name).read_text()
    run_record = json.loads((out / "run.json").read_text())
    assert run_record["generation"]["backend"] == "openai" and run_record["generation"]["precision"] == "server"


def test_cli_reports_a_stopped_server_in_one_line(tmp_path, capsys):
    from sdft.cli import main

    with StubServer() as server:
        url = server.url
    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    code = main(["eval", "--backend", "openai", "--endpoint", url, "--model", "stub", "--tasks", "gsm8k",
                 "--data", f"gsm8k={data}", "--out", str(tmp_path / "e"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unreachable" in err[0] and url in err[0]


def test_a_stage_that_never_calls_the_server_still_writes_no_key(tmp_path, tiny_model, monkeypatch, capsys):
    """Log-likelihood tasks score with a local model and never load the openai backend: its options were
    recorded in results.json unchecked, ``api_key=...`` included. Now refused before anything is written,
    and the command line (run records, the lock file) masks such values."""
    from sdft.base import provenance
    from sdft.cli import main

    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text(json.dumps({"question": "2 + 2 = ?", "subject": "x", "choices": ["3", "4"], "answer": 1}) + "\n")
    argv = ["eval", "--model", str(tiny_model), "--backend", "openai", "--endpoint", "http://127.0.0.1:9/v1",
            "--backend-option", "api_key=sk-typed-secret", "--tasks", "mmlu", "--data", f"mmlu={mmlu}",
            "--out", str(tmp_path / "out"), "--no-progress"]
    monkeypatch.setattr("sys.argv", ["sdft", *argv])
    assert "sk-typed-secret" not in provenance.command_line() and "api_key=***" in provenance.command_line()
    assert main(argv) == 2
    assert "never a setting" in capsys.readouterr().err
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not any("sk-typed-secret" in p.read_text(errors="replace") for p in written)
    assert not (tmp_path / "out" / "results.json").exists()
    argv[argv.index("http://127.0.0.1:9/v1")] = "http://me:pw@127.0.0.1:9/v1"
    argv[argv.index("api_key=sk-typed-secret")] = "timeout=5"
    monkeypatch.setenv("SDFT_API_KEY", "sk-env")
    assert main(argv) == 2
    assert "credentials inside the URL" in capsys.readouterr().err
    argv[argv.index("--endpoint"):argv.index("--endpoint") + 2] = []
    assert main(argv) == 2
    assert "--backend openai needs --endpoint" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_key_in_an_endpoint_query_string_reaches_no_record(tmp_path, tiny_model, monkeypatch):
    """Azure-style endpoints carry the key as ``?api-key=...``: run records keep the URL with its values hidden."""
    from sdft.cli import main

    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text(json.dumps({"question": "2 + 2 = ?", "subject": "x", "choices": ["3", "4"], "answer": 1}) + "\n")
    argv = ["eval", "--model", str(tiny_model), "--backend", "openai",
            "--endpoint", "http://127.0.0.1:9/v1?api-key=sk-query-secret", "--tasks", "mmlu",
            "--data", f"mmlu={mmlu}", "--out", str(tmp_path / "out"), "--no-progress"]
    monkeypatch.setattr("sys.argv", ["sdft", *argv])
    assert main(argv) == 0
    results = (tmp_path / "out" / "results.json").read_text()
    assert "api-key=***" in results
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    leaked = [(p.name, line) for p in written for line in p.read_text(errors="replace").splitlines()
              if "sk-query-secret" in line]
    assert not leaked
