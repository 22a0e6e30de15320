"""Works offline: with a local listener standing in for the hub (as HF_ENDPOINT and as every proxy), a
local model and local data, ``sdft train`` and ``sdft eval`` make no connection at all; a data path
that looks like a hub name fails in about a second, with one line."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from sdft.base import hub

_HUB_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "SDFT_OFFLINE",
             "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK", "CI")  # TRL skips telemetry on CI


class Listener:
    """Accepts TCP connections on 127.0.0.1, records the first bytes of each, answers 404."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.seen.append(conn.recv(300))
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass


@pytest.fixture
def fake_hub(monkeypatch):
    listener = Listener()
    url = f"http://127.0.0.1:{listener.port}"
    env = {k: v for k, v in os.environ.items() if k not in _HUB_VARS}
    env.update({"HF_ENDPOINT": url, "HTTP_PROXY": url, "HTTPS_PROXY": url, "ALL_PROXY": url,
                "http_proxy": url, "https_proxy": url, "NO_PROXY": "", "no_proxy": ""})
    listener.env = env
    yield listener
    listener.sock.close()


def sdft(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdft", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_train_and_eval_make_no_connection(fake_hub, tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Add {i} and 1.", "output": f"The answer is {i + 1}"}) + "\n"
                            for i in range(4)))
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(2)))
    trained = sdft(["train", "--model", str(tiny_model), "--data", str(data), "--max-steps", "1", "--batch-size", "2",
                    "--grad-accum", "1", "--max-length", "64", "--out", str(tmp_path / "adapter")],
                   fake_hub.env, tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = sdft(["eval", "--model", str(tiny_model), "--adapter", str(tmp_path / "adapter"), "--tasks", "gsm8k",
                      "--data", f"gsm8k={gsm}", "--max-new-tokens", "4", "--no-progress", "--out",
                      str(tmp_path / "eval")], fake_hub.env, tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    time.sleep(0.5)  # a background telemetry thread would have connected by now
    assert fake_hub.seen == []


def test_hub_like_data_typo_fails_fast(fake_hub, tmp_path):
    (tmp_path / "data").mkdir()
    began = time.perf_counter()
    local = sdft(["train", "--data", "data/trian", "--out", str(tmp_path / "o")], fake_hub.env, tmp_path)
    assert local.returncode == 2 and fake_hub.seen == []  # data/ is a local folder: a typo, no hub asked
    assert local.stderr.strip() == ("sdft train: error: data/trian: no such file, and not a Hugging Face "
                                    "dataset name (org/name[:split])")
    remote = sdft(["train", "--data", "someorg/trian", "--out", str(tmp_path / "o")], fake_hub.env, tmp_path)
    assert remote.returncode == 2 and len(remote.stderr.strip().splitlines()) == 1
    assert "no dataset 'someorg/trian' on the Hugging Face hub" in remote.stderr
    assert len(fake_hub.seen) == 1  # one metadata request, no retries
    offline = sdft(["train", "--offline", "--data", "someorg/trian", "--out", str(tmp_path / "o")], fake_hub.env,
                   tmp_path)
    assert offline.returncode == 2 and "local cache (offline mode was requested)" in offline.stderr
    assert len(fake_hub.seen) == 1
    assert time.perf_counter() - began < 60  # three runs, each mostly interpreter start-up


def test_offline_mode_reaches_libraries_imported_earlier(monkeypatch):
    import datasets.config
    import huggingface_hub.constants as constants

    for name in _HUB_VARS + ("HF_ENDPOINT",):
        monkeypatch.setenv(name, "")  # recorded, so that whatever configure() sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_state", {"reachable": None, "reason": None})
    hub.configure()
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # nothing listens on port 1
    assert hub.reachable() is False
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert "unreachable" in hub.offline_reason()
