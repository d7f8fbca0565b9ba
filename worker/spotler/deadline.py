"""One deadline for a whole HTTP request: connect, send and every read together.

requests' read timeout bounds each socket read, not the answer: a proxy that trickles a byte
every few seconds would keep a request open past the claim's lease, and another worker would
send the same rows meanwhile. At the deadline the request's socket is shut down, so the
blocked read returns at once and the request fails.

One watchdog thread per process serves every request: a timer thread per request cost
~250 us of CPU each, a third of a small request's whole cost.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class Deadline:
    """The deadline of one request in flight; `fired` once it passed and the socket was cut."""

    __slots__ = ("at", "connection", "fired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.connection: HTTPConnection | None = None
        self.fired = False


class _Watchdog:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self._wakeup = threading.Condition()
        self._armed: set[Deadline] = set()
        self._next: float | None = None  # when the thread wakes next; None: when told
        threading.Thread(target=self._run, name="spotler-request-deadlines",
                         daemon=True).start()

    def arm(self, deadline: Deadline) -> None:
        with self._wakeup:
            self._armed.add(deadline)
            if self._next is None or deadline.at < self._next:
                self._wakeup.notify()

    def disarm(self, deadline: Deadline) -> None:
        with self._wakeup:
            self._armed.discard(deadline)

    def watch(self, deadline: Deadline, connection: HTTPConnection) -> None:
        with self._wakeup:
            deadline.connection = connection
            if deadline.fired:
                _shut(connection)

    def _run(self) -> None:
        with self._wakeup:
            while True:
                now = time.monotonic()
                for deadline in [d for d in self._armed if d.at <= now]:
                    self._armed.discard(deadline)
                    deadline.fired = True
                    if deadline.connection is not None:
                        _shut(deadline.connection)
                self._next = min((d.at for d in self._armed), default=None)
                self._wakeup.wait(None if self._next is None else self._next - now)


_watchdog: _Watchdog | None = None
_watchdog_lock = threading.Lock()
_current = threading.local()


def _the_watchdog() -> _Watchdog:
    """The process's watchdog; a forked child (prefork pool) starts its own."""
    global _watchdog
    watchdog = _watchdog
    if watchdog is not None and watchdog.pid == os.getpid():
        return watchdog
    with _watchdog_lock:
        if _watchdog is None or _watchdog.pid != os.getpid():
            _watchdog = _Watchdog()
        return _watchdog


@contextlib.contextmanager
def request_deadline(seconds: float) -> Iterator[Deadline]:
    """Cut any request this thread makes through a DeadlineAdapter once `seconds` pass."""
    watchdog = _the_watchdog()
    deadline = Deadline(time.monotonic() + seconds)
    watchdog.arm(deadline)
    _current.deadline = deadline
    try:
        yield deadline
    finally:
        _current.deadline = None
        watchdog.disarm(deadline)


def _shut(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        # socket.socket's own shutdown, also for an SSLSocket: it wakes the reader without
        # tearing down the TLS state the reading thread is using.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watch(connection: HTTPConnection) -> None:
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        _the_watchdog().watch(deadline, connection)


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _watch(self)  # a new socket; a kept-alive one is watched in request()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections a request_deadline() can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool,
                                                   "https": _WatchedHTTPSPool}
