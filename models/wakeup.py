"""Wake the workers after an enqueue commits, without ever slowing or failing the order.

The message only says "there is work"; the row is the record of truth, and the workers' sweeper
finds every due row even when this message is lost or the broker is down.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, scoped_session

DISPATCH_TASK = "spotler_outbox.dispatch"
# A wake-up older than this is worthless (the sweeper has run since): after a long stop of the
# workers, a backlog of them is dropped instead of costing an empty claim each. The worker
# judges the age on its host's clock, not the database's: far above any skew NTP leaves, so a
# host whose clock is a minute or two off still runs them (the workers log such a skew).
WAKEUP_EXPIRES_SECONDS = 900
# After a send, commits within this window share the next message: a busy shop sends a few
# dozen messages a second, not one per order (each costs the order thread GIL time).
COALESCE_SECONDS = 0.03
# SQLAlchemy tells a Connection's listeners about a commit just before it happens: the message
# waits this long, so a worker it wakes finds the row committed.
BEFORE_COMMIT_DELAY_SECONDS = 0.05
_FLAG = "spotler_outbox_wakeup"

log = logging.getLogger("spotler_outbox.wakeup")


class _Waker:
    """One background thread per process; a burst of commits becomes one broker message."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.pending = threading.Event()
        self.pid = os.getpid()
        self.sent = 0
        self.failed = 0
        self.not_before = 0.0
        self._app: Any = None
        self._thread = threading.Thread(target=self._run, name="spotler-outbox-wakeup",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.pending.wait()
            pause = self.not_before - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self.pending.clear()
            try:
                self._send()
            except Exception as e:  # the order must not notice a broker outage
                self.failed += 1
                log.warning("wake-up not sent (%s: %s); the sweeper will pick the order up",
                            type(e).__name__, e)
            else:
                self.sent += 1
            time.sleep(COALESCE_SECONDS)

    def _send(self) -> None:
        if self._app is None:
            from celery import Celery  # a Celery app is costly: built on first use only

            self._app = Celery("spotler_outbox_producer", broker=self.broker_url,
                               set_as_current=False)
            self._app.conf.broker_connection_timeout = 2
            if self.broker_url.startswith(("redis://", "rediss://")):
                # A broker that is down must cost this thread seconds, not minutes.
                self._app.conf.broker_transport_options = {"socket_connect_timeout": 2,
                                                           "socket_timeout": 2}
        send_wakeup(self._app)


def send_wakeup(app: Any) -> None:
    """The one way a dispatch task is asked for, by the order system, the sweeper or a
    dispatch handing over. No arguments: Flower shows them, and the rows are the truth. No
    retry: a broker that is down fails the send at once (the sweeper covers it)."""
    app.send_task(DISPATCH_TASK, expires=WAKEUP_EXPIRES_SECONDS, retry=False, ignore_result=True)


_wakers: dict[str, _Waker] = {}
_lock = threading.Lock()


def request_dispatch(broker_url: str, *, delay: float = 0.0) -> None:
    """Ask for a dispatch soon (not before `delay` seconds); returns at once."""
    waker = _wakers.get(broker_url)
    if waker is None or waker.pid != os.getpid():  # a forked child needs its own thread
        with _lock:
            waker = _wakers.get(broker_url)
            if waker is None or waker.pid != os.getpid():
                waker = _wakers[broker_url] = _Waker(broker_url)
    if delay:
        waker.not_before = max(waker.not_before, time.monotonic() + delay)
    waker.pending.set()


# --- after the caller's commit -------------------------------------------------------------
# The listeners are registered once (on the Session class, once per Engine) and read a flag
# kept in the transaction's own info dict: a call registers nothing that outlives it, so
# 10,000 requests through one scoped_session leave the listener count where it was.

_sessions_listening = False
_engines_listening: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def wake_after_session_commit(session: Session | scoped_session[Any], broker_url: str) -> None:
    """Wake the workers once the session commits; forget it if it rolls back."""
    global _sessions_listening
    if not _sessions_listening:
        with _lock:
            if not _sessions_listening:
                sa_event.listen(Session, "after_commit", _session_committed)
                sa_event.listen(Session, "after_rollback", _session_rolled_back)
                _sessions_listening = True
    session.info[_FLAG] = broker_url


def _session_committed(session: Session) -> None:
    broker_url = session.info.pop(_FLAG, None)
    if broker_url:
        request_dispatch(broker_url)


def _session_rolled_back(session: Session) -> None:
    session.info.pop(_FLAG, None)


def wake_after_connection_commit(conn: sa.Connection, broker_url: str) -> None:
    """Wake the workers once the connection's transaction commits."""
    engine = conn.engine
    if engine not in _engines_listening:
        with _lock:
            if engine not in _engines_listening:
                sa_event.listen(engine, "commit", _connection_committing)
                sa_event.listen(engine, "rollback", _connection_rolled_back)
                _engines_listening.add(engine)
    conn.info[_FLAG] = broker_url


def _connection_committing(conn: sa.Connection) -> None:
    broker_url = conn.info.pop(_FLAG, None)
    if broker_url:
        request_dispatch(broker_url, delay=BEFORE_COMMIT_DELAY_SECONDS)


def _connection_rolled_back(conn: sa.Connection) -> None:
    conn.info.pop(_FLAG, None)
