"""HTTP calls to an OpenAI-compatible endpoint (the win-rate judge), with the API key kept safe.

urllib's defaults would hand the key to whoever the server redirects us to, send it over plain http to
any host, and put ``user:pass@`` URLs into error messages. Here:

* redirects are not followed (a redirect to another origin would carry the ``Authorization`` header);
  the error names where the server pointed, so the user can configure that URL directly;
* with a key, ``http://`` is accepted only for loopback hosts (a local server); credentials inside the
  URL are refused (they would end up in logs and run records) -- keys come from the environment;
* no message shows the key, URL credentials or query-string values.

A server may also be broken or hostile in what it sends back: a reply is read up to a size cap (never
more than one byte past it: ``max_bytes``, default ``MAX_REPLY_BYTES``), each exchange has one deadline
(``timeout``: connecting, sending and every read together, so a server that sends a byte now and then
cannot hold a run), and a reply cut short of its length is a retryable error, never a traceback.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from sdft.base.errors import ConfigError, SdftError

_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
# A completion or a model list is kilobytes; a long answer with token ids a few MiB at most.
MAX_REPLY_BYTES = 32 * 2**20
_READ_BLOCK = 2**16


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


class _Deadline:
    """One exchange's deadline. A socket timeout bounds each read alone: a server sending a byte every few
    seconds would hold the request forever. When the deadline passes a timer shuts the exchange's sockets
    down, which ends whatever connect, write or read waits on them."""

    def __init__(self, seconds: float):
        self.seconds, self.end, self.expired = seconds, time.monotonic() + seconds, False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return max(0.001, self.end - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        # A duplicate descriptor: shutdown() acts on the connection itself, so it also reaches the TLS
        # socket that takes the original over, and the duplicate is ours to close (no reused descriptor).
        copy = sock.dup()
        with self._lock:
            self._sockets.append(copy)
            if self.expired:
                _shutdown(copy)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected yet, or already closed


class _Watched:
    """A connection whose socket its :class:`_Deadline` can cut; with ``loopback_only`` (a key over plain
    http) it refuses, before sending anything, a peer that is not a loopback address: the URL's host was
    checked, but the name may resolve elsewhere by now, or a proxy may sit in between."""

    def __init__(self, *args, deadline: _Deadline, loopback_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline, self._loopback_only = deadline, loopback_only
        self._create_connection = self._open

    def _open(self, address, timeout=None, source_address=None):
        timeout = min(timeout, self._deadline.left()) if isinstance(timeout, (int, float)) else self._deadline.left()
        sock = socket.create_connection(address, timeout, source_address)
        self._deadline.watch(sock)
        peer = sock.getpeername()[0]
        if self._loopback_only and not _loopback_ip(peer):
            sock.close()
            raise SdftError(f"endpoint host {self.host} connected to {peer}, not a loopback address: refusing "
                            "to send the API key in clear text over http:// (a proxy in between, or the name "
                            "resolves elsewhere now); use https://")
        return sock


class _HTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline, loopback_only: bool):
        super().__init__()
        self._options = {"deadline": deadline, "loopback_only": loopback_only}

    def http_open(self, req):
        return self.do_open(_HTTPConnection, req, **self._options)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=self._context, deadline=self._deadline)


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _size(count: int) -> str:
    return f"{count / 2**20:g} MiB" if count >= 2**20 and count % 2**20 == 0 else f"{count} bytes"


class Transient(SdftError):
    """A failure worth retrying: the endpoint unreachable, timed out, rate-limited or erring (HTTP 5xx)."""


class ReplyTooLarge(SdftError):
    """A reply over the size cap (not retried: the server would send it again)."""


def _read_capped(response, limit: int, shown: str) -> bytes:
    """The body, read in blocks and never more than ``limit + 1`` bytes of it; a body shorter than its
    Content-Length (the server closed early) is :class:`Transient`."""
    declared = getattr(response, "length", None)  # http.client's Content-Length; None when chunked or absent
    if declared is not None and declared > limit:
        raise ReplyTooLarge(f"endpoint {shown} announced a reply of {_size(declared)}, larger than "
                            f"{_size(limit)}; not read")
    body = bytearray()
    while len(body) <= limit:
        block = response.read(min(_READ_BLOCK, limit + 1 - len(body)))
        if not block:
            break
        body += block
    if len(body) > limit:
        raise ReplyTooLarge(f"endpoint {shown} sent a reply larger than {_size(limit)}; stopped reading it")
    if declared is not None and len(body) < declared:
        raise Transient(f"endpoint {shown} closed the connection in the middle of its reply "
                        f"({len(body)} of {declared} bytes)")
    return bytes(body)


def _exchange(request, deadline: _Deadline, *, loopback_only: bool, max_bytes: int, shown: str,
              api_key: str | None) -> bytes:
    opener = urllib.request.build_opener(_NoRedirects, _HTTPHandler(deadline, loopback_only),
                                         _HTTPSHandler(deadline))
    try:
        with opener.open(request, timeout=deadline.seconds) as response:
            return _read_capped(response, max_bytes, shown)
    except urllib.error.HTTPError as exc:
        # Rate limits and server errors are worth a retry; anything else is the user's to fix.
        try:
            detail = _scrub(exc.read(200).decode(errors="replace"), api_key)
        except (OSError, http.client.HTTPException):
            detail = ""
        finally:
            exc.close()
        error = Transient if exc.code in _RETRY_STATUS else SdftError
        raise error(f"endpoint {shown} answered HTTP {exc.code}: {detail}") from None
    except http.client.IncompleteRead as exc:  # a chunked reply that stopped mid-chunk
        raise Transient(f"endpoint {shown} closed the connection in the middle of its reply "
                        f"({len(exc.partial)} bytes into a chunk)") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = _scrub(str(getattr(exc, "reason", exc)) or type(exc).__name__, api_key)
        raise Transient(f"endpoint {shown} unreachable: {reason}") from None


def request_json(url: str, payload: dict | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0, max_bytes: int = MAX_REPLY_BYTES) -> dict:
    """One exchange: GET (no payload) or POST ``payload``; the JSON reply, else ``Transient`` / SdftError.
    ``timeout`` bounds the whole exchange; ``max_bytes`` the reply."""
    check_url(url, has_key=bool(api_key))
    shown = redact(url)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    deadline = _Deadline(timeout)
    try:
        raw = _exchange(request, deadline, loopback_only=urlsplit(url).scheme == "http" and bool(api_key),
                        max_bytes=max_bytes, shown=shown, api_key=api_key)
    except SdftError:
        if not deadline.expired:
            raise
        raw = None  # cut by the deadline: whatever broke, the reason is the time
    finally:
        deadline.close()
    if deadline.expired:  # also a reply without a length, which the cut made look complete
        raise Transient(f"endpoint {shown} timed out: no complete reply within {timeout:g} s") from None
    try:
        return json.loads(raw.decode())
    except ValueError:
        raise SdftError(f"endpoint {shown} answered something that is not JSON: {raw[:80]!r}") from None


def post_json(url: str, payload: dict, *, api_key: str | None = None, timeout: float = 120.0,
              retries: int = 4, max_bytes: int = MAX_REPLY_BYTES) -> dict:
    """POST ``payload`` and return the JSON reply; rate limits, server errors, timeouts and broken
    connections are retried with backoff (``timeout`` is each attempt's deadline)."""
    for attempt in range(retries + 1):
        try:
            return request_json(url, payload, api_key=api_key, timeout=timeout, max_bytes=max_bytes)
        except Transient:
            if attempt == retries:
                raise
        time.sleep(min(30.0, 2.0 ** attempt))
    raise AssertionError("unreachable: the loop returns or raises")
