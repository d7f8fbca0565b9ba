"""Dispatch the moment a row commits on PostgreSQL, whoever inserted it.

Migration 0004 makes every insert into outbox_events notify the channel below when its
transaction commits: also rows inserted by PHP or psql, which send no broker message. A thread
in each worker LISTENs and turns notifications into wake-ups through the same coalescing waker
as a Python enqueue (a burst of commits becomes one broker message). A lost connection is
retried with backoff; meanwhile, behind a pooler in transaction mode (where LISTEN cannot
work: the listener finds out by a probe and stands down), and on MariaDB and SQLite, the
workers' sweeper bounds the wait.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import sqlalchemy as sa
from celery import bootsteps
from sqlalchemy.engine import make_url

from spotler_outbox.models.database import shown_url
from spotler_outbox.models.errors import first_line
from spotler_outbox.models.settings import get_settings
from spotler_outbox.models.wakeup import request_dispatch

# The channel migration 0004's trigger notifies.
CHANNEL = "spotler_outbox"
# How often the thread looks up from waiting to see whether the worker is stopping.
POLL_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 30.0
# How long the listener waits to hear its own probe before it concludes it hears nothing.
PROBE_SECONDS = 5.0

log = logging.getLogger("spotler_outbox.listen")


def can_listen(database_url: str) -> bool:
    """LISTEN needs PostgreSQL through psycopg 3 (the driver of the [postgres] extra)."""
    url = make_url(database_url)
    return url.get_backend_name() == "postgresql" and url.get_driver_name() == "psycopg"


class Listener:
    """One thread and one autocommit connection, outside the dispatch engine's pool."""

    def __init__(self, database_url: str, broker_url: str) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spotler-outbox-listen",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(POLL_SECONDS * 2)

    def _connect(self) -> Any:
        import psycopg

        # The dialect turns the URL (query options included) into psycopg's arguments, so the
        # listener reaches the database exactly as the workers' engine does.
        engine = sa.create_engine(self.database_url)
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        engine.dispose()
        return psycopg.connect(*args, **kwargs, autocommit=True)

    def _run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            listening = False
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if not self._hears_a_probe(conn):
                        log.warning(
                            "LISTEN on %s hears no notification, not even a probe of its own: "
                            "a connection pooler in transaction mode (PgBouncer) cannot carry "
                            "it. Not listening: new rows wait for the sweeper (every %g s)",
                            shown_url(self.database_url), get_settings().sweep_interval)
                        return
                    listening = True
                    log.info("listening for new outbox rows on %s", shown_url(self.database_url))
                    backoff = 1.0
                    # Rows may have committed while nobody listened.
                    request_dispatch(self.broker_url)
                    self._wait_for_notifications(conn)
            except Exception as e:
                if self.stopping.is_set():
                    return
                self._log_failure(e, backoff, was_listening=listening)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP_SECONDS)

    def _log_failure(self, error: Exception, backoff: float, *, was_listening: bool) -> None:
        """What is true: a lost connection leaves the sweeper to find new rows; a database
        that cannot be reached at all (down, or a wrong URL) stops the sweeper and dispatch
        too, for they use the same one."""
        detail = first_line(error)
        if was_listening:
            log.warning("LISTEN connection to %s lost (%s: %s); retrying in %.0f s, the "
                        "sweeper finds new rows meanwhile", shown_url(self.database_url),
                        type(error).__name__, detail, backoff)
        else:
            log.error("cannot reach the outbox database at %s to LISTEN (%s: %s); retrying in "
                      "%.0f s. The sweeper and dispatch use the same database: nothing is "
                      "delivered until it answers", shown_url(self.database_url),
                      type(error).__name__, detail, backoff)

    def _hears_a_probe(self, conn: Any) -> bool:
        """Notify the channel from a second connection and wait to hear it on this one.

        Behind a pooler in transaction mode the LISTEN stays on whichever server connection
        ran it, and its notifications reach other clients or none: never this one. (From this
        same connection the probe could come back through that very server connection.)
        """
        probe = f"probe-{uuid.uuid4().hex}"
        with self._connect() as other:
            other.execute("SELECT pg_notify(%s, %s)", (CHANNEL, probe))
        deadline = time.monotonic() + PROBE_SECONDS
        while (left := deadline - time.monotonic()) > 0 and not self.stopping.is_set():
            for notification in conn.notifies(timeout=min(left, POLL_SECONDS), stop_after=1):
                if notification.payload == probe:
                    return True
                request_dispatch(self.broker_url)  # a row committed meanwhile
        return self.stopping.is_set()

    def _wait_for_notifications(self, conn: Any) -> None:
        while not self.stopping.is_set():
            for _ in conn.notifies(timeout=POLL_SECONDS, stop_after=1):
                request_dispatch(self.broker_url)


class ListenStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs the listener in the worker's main process, after the pool has forked its children
    (so no child inherits the listening connection)."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.listener: Listener | None = None

    def start(self, worker: Any) -> None:
        settings = get_settings()
        if not can_listen(settings.database_url):
            log.info("no LISTEN on this database: new rows wait for the sweeper (every %g s)",
                     settings.sweep_interval)
            return
        self.listener = Listener(settings.database_url, settings.broker_url)
        self.listener.start()

    def stop(self, worker: Any) -> None:
        if self.listener is not None:
            self.listener.stop()
