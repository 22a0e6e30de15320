"""The endpoints one openai backend spreads its requests over, and which of them are still used.

A server that is killed, crashes or hangs mid-run fails every request sent to it, in flight or new. Such an
endpoint is *dropped* after ``DROP_AFTER`` failures in a row (no answer between: a dead server's requests in
flight reach that together), or at once when a request has spent its retries there while another endpoint
lives. A dropped endpoint gets no new request, and each request that failed there goes to the endpoints left
without spending its own retries: a dead server costs the run its share of the speed, never a record. The
last endpoint is never dropped: its failures end the job after the usual retries, as with one server.
A dropped endpoint is not tried again by this backend; the next stage's backend checks every endpoint
again before any work and stops, in one line, at one still down.

Requests go round-robin over the live endpoints, a retry to the one after where it failed, and at most
``per_endpoint`` are in flight on each (the thread pool is sized for all endpoints: once one is dropped the
others must not take its share of concurrency too).
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from contextlib import contextmanager

from sdft.base.endpoint import redact

DROP_AFTER = 3


class Fleet:
    def __init__(self, urls: list[str], per_endpoint: int):
        self.live = list(urls)
        self.dropped: dict[str, str] = {}  # url -> the failure that dropped it
        self._per = per_endpoint
        self._in_flight = Counter()
        self._failures = Counter()  # in a row, per endpoint
        self._moved = Counter()  # requests moved off each dropped endpoint, since take_moved()
        self._next = 0
        self._cond = threading.Condition()

    @contextmanager
    def slot(self, after: str | None = None):
        """An endpoint to send one request to, held while it is in flight: the next in round-robin order,
        or the next live one after ``after`` (a retry)."""
        url = self._acquire(after)
        try:
            yield url
        finally:
            with self._cond:
                self._in_flight[url] -= 1
                self._cond.notify_all()

    def _acquire(self, after: str | None) -> str:
        with self._cond:
            while True:
                if after in self.live:
                    url = self.live[(self.live.index(after) + 1) % len(self.live)]
                else:
                    url = self.live[self._next % len(self.live)]
                    self._next += 1
                while url in self.live and self._in_flight[url] >= self._per:
                    self._cond.wait()
                if url in self.live:  # else dropped while we waited: choose again
                    self._in_flight[url] += 1
                    return url

    def succeeded(self, url: str) -> None:
        with self._cond:
            self._failures[url] = 0

    def failed(self, url: str, error: str, retries_spent: bool) -> bool:
        """Count a failure of ``url``; True when the endpoint is dropped (now or before): the request then
        moves on without spending a retry."""
        with self._cond:
            if url in self.dropped:
                self._moved[url] += 1
                return True
            self._failures[url] += 1
            if len(self.live) == 1 or (self._failures[url] < DROP_AFTER and not retries_spent):
                return False
            self.live.remove(url)
            self.dropped[url] = error
            self._moved[url] += 1
            self._cond.notify_all()
            others = ", ".join(map(redact, self.live))
            print(f"sdft: endpoint {redact(url)} dropped after {self._failures[url]} failed request(s) in a row "
                  f"(the last: {error}); its requests go to {others}", file=sys.stderr, flush=True)
            return True

    def was_dropped(self, url: str) -> bool:
        """After a backoff: a failure there is not the request's when the endpoint was dropped meanwhile."""
        with self._cond:
            if url in self.dropped:
                self._moved[url] += 1
                return True
            return False

    def report_moved(self) -> None:
        """One line per endpoint dropped since the last report: how many requests moved, and where."""
        with self._cond:
            moved, self._moved = self._moved, Counter()
            others = ", ".join(map(redact, self.live))
        for url, count in moved.items():
            print(f"sdft: {count} request(s) moved from the dropped endpoint {redact(url)} to {others}, "
                  "each answered once", file=sys.stderr, flush=True)

    def dropped_note(self) -> str:
        if not self.dropped:
            return ""
        return "; endpoint(s) dropped earlier: " + ", ".join(
            f"{redact(url)} ({error})" for url, error in self.dropped.items())
