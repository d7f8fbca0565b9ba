"""Dispatch the moment a row commits on PostgreSQL, whoever inserted it.

Migration 0004 makes every insert into outbox_events notify the channel below when its
transaction commits: also rows inserted by PHP or psql, which send no broker message. A thread
in each worker LISTENs and turns notifications into wake-ups through the same coalescing waker
as a Python enqueue (a burst of commits becomes one broker message). A lost connection is
retried with backoff; meanwhile, and on MariaDB and SQLite, the workers' sweeper bounds the wait.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import sqlalchemy as sa
from celery import bootsteps
from sqlalchemy.engine import make_url

from spotler_outbox.models.database import shown_url
from spotler_outbox.models.settings import get_settings
from spotler_outbox.models.wakeup import request_dispatch

# The channel migration 0004's trigger notifies.
CHANNEL = "spotler_outbox"
# How often the thread looks up from waiting to see whether the worker is stopping.
POLL_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 30.0

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
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        if was_listening:
            log.warning("LISTEN connection to %s lost (%s: %s); retrying in %.0f s, the "
                        "sweeper finds new rows meanwhile", shown_url(self.database_url),
                        type(error).__name__, detail, backoff)
        else:
            log.error("cannot reach the outbox database at %s to LISTEN (%s: %s); retrying in "
                      "%.0f s. The sweeper and dispatch use the same database: nothing is "
                      "delivered until it answers", shown_url(self.database_url),
                      type(error).__name__, detail, backoff)

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
