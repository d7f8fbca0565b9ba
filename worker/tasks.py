"""Thin Celery tasks over the dispatcher. Arguments are never payloads (Flower shows them)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_shutting_down
from sqlalchemy.engine import Engine

from spotler_outbox.models.database import database_unavailable, make_engine
from spotler_outbox.models.errors import OutboxError, first_line
from spotler_outbox.models.settings import get_settings
from spotler_outbox.models.wakeup import DISPATCH_TASK, send_wakeup
from spotler_outbox.worker.celery import app
from spotler_outbox.worker.dispatch import Dispatcher
from spotler_outbox.worker.logs import configure_logging

log = logging.getLogger("spotler_outbox.tasks")


class DatabaseUnavailable(OutboxError):
    """A dispatch could not use the outbox: the task ends FAILED in Flower.

    Listed in the tasks' `throws`: Celery records the failure (state, one-line reason) and logs
    it without a traceback. The task is only a wake-up, acked like any other, never retried:
    the rows are the truth, and the sweeper wakes dispatch again once the database is back.
    """


class WorkerState:
    """This worker process's state across tasks, kept by Celery's signals: who it is, whether
    a stop was asked, its engine and dispatchers, and whether the database is out."""

    def __init__(self) -> None:
        # Set on SIGTERM: the batch in flight is finished and marked, then no new one starts.
        self.stop_requested = threading.Event()
        self.main_pid: int | None = None
        self.node_name: str | None = None
        self.in_pool_child = False
        self._engine: tuple[int, Engine] | None = None
        self._local = threading.local()  # the threads pool runs tasks on several threads
        self._outage = threading.Lock()
        self._out_since: str | None = None  # the first error of the outage going on

    def dispatcher(self) -> Dispatcher:
        """One dispatcher per thread, over one engine per process, both built after the fork."""
        pid = os.getpid()
        dispatcher: Dispatcher | None = getattr(self._local, "dispatcher", None)
        if dispatcher is not None and self._local.pid == pid:
            return dispatcher
        settings = get_settings()
        if self._engine is None or self._engine[0] != pid:
            # No pre-ping: it costs a round trip per transaction, three per batch. A connection
            # that died with a database restart fails its statement instead, and both the task
            # and the recording of Spotler's answer are built to survive that.
            self._engine = (pid, make_engine(settings.database_url, pool_pre_ping=False))
        dispatcher = Dispatcher(
            self._engine[1], None, settings, stopping=self.stop_requested,
            # The Celery node name (w1@host): two workers on one machine must be told apart.
            worker_name=(f"{self.node_name or socket.gethostname()}:{pid}:"
                         f"{threading.get_ident() % 10000}"))
        self._local.dispatcher, self._local.pid = dispatcher, pid
        return dispatcher

    def database_out(self, error: BaseException) -> DatabaseUnavailable:
        """One line when an outage starts (not one per task); the task's failure to raise."""
        reason = f"{type(getattr(error, 'orig', None) or error).__name__}"
        with self._outage:
            if self._out_since is None:
                log.error("dispatch stopped: database unavailable (%s: %s); the sweeper wakes "
                          "dispatch once it is back", reason, first_line(error))
                self._out_since = reason
        # Not chained: the driver's message carries the SQL and its parameters (payloads,
        # e-mails) into the result, the task event and Flower.
        return DatabaseUnavailable(f"dispatch stopped: database unavailable ({reason})")

    def database_back(self) -> None:
        with self._outage:
            if self._out_since is not None:
                log.warning("dispatch reaches the database again")
                self._out_since = None


state = WorkerState()


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    state.main_pid = os.getpid()
    state.node_name = getattr(sender, "hostname", None)


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    # The solo pool sends this signal in the main process, whose SIGTERM handler is Celery's.
    state.in_pool_child = os.getpid() != state.main_pid
    configure_logging(get_settings())


@contextmanager
def _sigterm_finishes_the_batch() -> Iterator[None]:
    """In a prefork child, make SIGTERM finish the batch in flight instead of killing it.

    billiard makes a child exit on SIGTERM, mid-request, leaving its rows to wait out their
    lease (celery/celery#4795), and systemd or `kill 0` signal the whole process group. The
    handler is ours only while a dispatch runs: an idle child still exits on SIGTERM, and a
    signal caught during one run does not silence the next.
    """
    if not state.in_pool_child or threading.current_thread() is not threading.main_thread():
        yield
        return
    state.stop_requested.clear()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: state.stop_requested.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    # Solo and thread pools run tasks in this process: let the current batch finish and stop.
    state.stop_requested.set()


@app.task(name=DISPATCH_TASK, throws=(DatabaseUnavailable,))
def dispatch() -> dict[str, Any]:
    """Claim and send due rows until none are due or the time budget is spent."""
    dispatcher = state.dispatcher()
    try:
        with _sigterm_finishes_the_batch():
            report = dispatcher.run()
    except Exception as e:
        if not database_unavailable(e):
            raise
        # Nothing was lost: claimed rows come back when their lease runs out.
        raise state.database_out(e) from None
    state.database_back()
    if report.budget_spent and not dispatcher.stopping.is_set():
        # More may be due: hand over to a fresh task instead of holding this slot forever.
        send_wakeup(app)
    return report.as_result()
