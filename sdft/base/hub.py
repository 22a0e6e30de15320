"""The Hugging Face hub: offline mode, no telemetry, and one quick reachability probe per process.

The HF libraries read ``HF_HUB_OFFLINE`` / ``HF_HUB_DISABLE_TELEMETRY`` once, when they are imported, and
otherwise try the network (with retries) whenever a name is not a local path. sdft never needs the hub
for a local model and local data, so:

* telemetry is off unless the user turned it on (``HF_HUB_DISABLE_TELEMETRY=0``): TRL pings the hub
  from every trainer otherwise;
* offline mode (``--offline``, ``SDFT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) is set for every HF library,
  including ones imported before we knew (their module-level switches are updated too);
* the hub is probed only when a name really needs it, once per process; when it is unreachable we
  switch to offline mode, so later library calls read the cache instead of retrying for ~25 s.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

_TRUE = ("1", "true", "yes", "on")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_state: dict = {"reachable": None, "reason": None}


def _is_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def configure(offline: bool = False) -> None:
    """Telemetry off by default, offline mode if asked. The CLI calls it first thing; stages that reach
    the hub themselves (training) call it again for library users."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and _is_true("HF_HUB_DISABLE_TELEMETRY"):  # imported before us (library use)
        constants.HF_HUB_DISABLE_TELEMETRY = True
    if offline or _is_true("SDFT_OFFLINE"):
        go_offline("offline mode was requested")
    elif _is_true("HF_HUB_OFFLINE") or _is_true("TRANSFORMERS_OFFLINE"):
        go_offline("HF_HUB_OFFLINE is set")


def is_offline() -> bool:
    return _is_true("HF_HUB_OFFLINE") or _is_true("TRANSFORMERS_OFFLINE")


def offline_reason() -> str:
    return _state["reason"] or ("HF_HUB_OFFLINE is set" if is_offline() else "the hub is unreachable")


def go_offline(reason: str) -> None:
    """Offline mode and no telemetry for every HF library, including those already imported."""
    for name in _OFFLINE_VARS + ("HF_HUB_DISABLE_TELEMETRY",):
        os.environ[name] = "1"
    _state.update(reachable=False, reason=_state["reason"] or reason)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
        constants.HF_HUB_DISABLE_TELEMETRY = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection (asked once per process); offline mode if it does not."""
    if is_offline():
        return False
    if _state["reachable"] is None:
        if any(os.environ.get(v) for v in _PROXY_VARS):
            _state["reachable"] = True  # a direct probe says nothing behind a proxy; the request will tell
        else:
            url = urlparse(endpoint())
            try:
                with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                              timeout=timeout):
                    _state["reachable"] = True
            except OSError:
                go_offline(f"the hub at {url.hostname} is unreachable")
    return bool(_state["reachable"])


def missing_dataset(repo: str, timeout: float = 10.0) -> str | None:
    """Why ``repo`` cannot be a hub dataset (one metadata request, no retries), or None when it may be.

    A network failure here switches to offline mode: the caller then tries the local cache only.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi(endpoint=endpoint()).dataset_info(repo, timeout=timeout)
    except GatedRepoError:
        return None  # exists; loading will say what access is missing
    except RepositoryNotFoundError:
        return f"no dataset '{repo}' on the Hugging Face hub (or it is private)"
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return f"no dataset '{repo}' on the Hugging Face hub (HTTP {status})" if status in (401, 404) else None
    except Exception as exc:  # connection refused, timeouts, proxy errors (httpx's are not OSErrors)
        go_offline(f"the hub could not be reached ({type(exc).__name__})")
    return None
