"""HTTP calls to an OpenAI-compatible endpoint (the win-rate judge), with the API key kept safe.

urllib's defaults would hand the key to whoever the server redirects us to, send it over plain http to
any host, and put ``user:pass@`` URLs into error messages. Here:

* redirects are not followed (a redirect to another origin would carry the ``Authorization`` header);
  the error names where the server pointed, so the user can configure that URL directly;
* with a key, ``http://`` is accepted only for loopback hosts (a local server); credentials inside the
  URL are refused (they would end up in logs and run records) -- keys come from the environment;
* no message shows the key, URL credentials or query-string values.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from sdft.errors import ConfigError, SdftError

_RETRY_STATUS = (408, 429, 500, 502, 503, 504)


def api_key() -> str | None:
    """The judge's key, from the environment only."""
    return os.environ.get("SDFT_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


def redact(url: str) -> str:
    """The URL without user info and with query values hidden, fit for messages and run records."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, hide_query(parts.query), ""))


def hide_query(query: str) -> str:
    """A URL query with every value hidden (``api-key=***&code=***``): keys ride there (Azure, SAS ``sig``)."""
    return "&".join(f"{p.partition('=')[0]}=***" if "=" in p else p for p in query.split("&") if p)


def with_path(url: str, suffix: str) -> str:
    """``url`` with ``suffix`` at the end of its path, once; the query stays last
    (``http://h/v1?x=1`` + ``/models`` -> ``http://h/v1/models?x=1``)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return urlunsplit(parts._replace(path=path if path.endswith(suffix) else path + suffix))


def without_path(url: str, suffix: str) -> str:
    """``url`` with a trailing ``/`` and ``suffix`` taken off its path; the query stays."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/").removesuffix(suffix)))


def _loopback_ip(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as a dual-stack socket names its peer
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def is_loopback(host: str | None) -> bool:
    """A loopback address, or a ``localhost`` / ``*.localhost`` name that resolves to loopback addresses
    only: RFC 6761 reserves those names, but a resolver need not honour it, and the key would go wherever
    the name points."""
    if not host:
        return False
    name = host.lower().rstrip(".")
    if name != "localhost" and not name.endswith(".localhost"):
        return _loopback_ip(host)
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(_loopback_ip(address) for address in addresses)


def check_url(url: str, *, has_key: bool) -> str:
    """Refuse URLs that would leak credentials; returns the URL unchanged when it is safe to call."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint '{redact(url)}' must be an http(s)://host/... URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"endpoint {redact(url)}: credentials inside the URL are refused (they would be "
                          "logged and recorded); put the key in the environment (SDFT_JUDGE_API_KEY)")
    if parts.scheme == "http" and has_key and not is_loopback(parts.hostname):
        raise ConfigError(f"endpoint {redact(url)}: refusing to send the API key in clear text over "
                          f"http:// to {parts.hostname}, not a loopback host; use https:// (http is accepted "
                          "only for 127.0.0.1, ::1, or a localhost name that resolves to loopback only)")
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise SdftError(f"endpoint {redact(req.full_url)} redirected (HTTP {code}) to {redact(newurl)}; "
                        "redirects are not followed, so that the API key stays with the host you named: "
                        "use the final URL")


_OPENER = urllib.request.build_opener(_NoRedirects)


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class Transient(SdftError):
    """A failure worth retrying: the endpoint unreachable, timed out, rate-limited or erring (HTTP 5xx)."""


def request_json(url: str, payload: dict | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0) -> dict:
    """One exchange: GET (no payload) or POST ``payload``; the JSON reply, else ``Transient`` / SdftError."""
    check_url(url, has_key=bool(api_key))
    shown = redact(url)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        # Rate limits and server errors are worth a retry; anything else is the user's to fix.
        detail = _scrub(exc.read()[:200].decode(errors="replace"), api_key)
        error = Transient if exc.code in _RETRY_STATUS else SdftError
        raise error(f"endpoint {shown} answered HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = _scrub(str(getattr(exc, "reason", exc)), api_key)
        raise Transient(f"endpoint {shown} unreachable: {reason}") from None
    try:
        return json.loads(raw.decode())
    except ValueError:
        raise SdftError(f"endpoint {shown} answered something that is not JSON: {raw[:80]!r}") from None


def post_json(url: str, payload: dict, *, api_key: str | None = None, timeout: float = 120.0,
              retries: int = 4) -> dict:
    """POST ``payload`` and return the JSON reply; rate limits and server errors are retried with backoff."""
    for attempt in range(retries + 1):
        try:
            return request_json(url, payload, api_key=api_key, timeout=timeout)
        except Transient:
            if attempt == retries:
                raise
        time.sleep(min(30.0, 2.0 ** attempt))
    raise AssertionError("unreachable: the loop returns or raises")
