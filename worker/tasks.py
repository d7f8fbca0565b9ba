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
from sqlalchemy.exc import OperationalError

from spotler_outbox.models.database import make_engine
from spotler_outbox.models.errors import OutboxError
from spotler_outbox.models.settings import get_settings
from spotler_outbox.models.wakeup import DISPATCH_TASK, WAKEUP_EXPIRES_SECONDS
from spotler_outbox.worker.celery import app
from spotler_outbox.worker.dispatch import Dispatcher
from spotler_outbox.worker.logs import configure_logging

log = logging.getLogger("spotler_outbox.tasks")

# Set on SIGTERM: the batch in flight is finished and marked, then no new batch starts.
_stop_requested = threading.Event()
_engine: tuple[int, Engine] | None = None
_local = threading.local()  # the threads pool runs tasks on several threads of one process


def get_dispatcher() -> Dispatcher:
    """One dispatcher per thread, over one engine per process, both built after the fork."""
    global _engine
    pid = os.getpid()
    dispatcher: Dispatcher | None = getattr(_local, "dispatcher", None)
    if dispatcher is not None and _local.pid == pid:
        return dispatcher
    settings = get_settings()
    if _engine is None or _engine[0] != pid:
        # No pre-ping: it costs a round trip per transaction, three per batch. A connection
        # that died with a database restart fails its statement instead, and both the task
        # and the recording of Spotler's answer are built to survive that.
        _engine = (pid, make_engine(settings.database_url, pool_pre_ping=False))
    dispatcher = Dispatcher(
        _engine[1], None, settings,
        # The Celery node name (w1@host): two workers on one machine must be told apart.
        worker_name=f"{_node_name or socket.gethostname()}:{pid}:{threading.get_ident() % 10000}",
    )
    dispatcher.stopping = _stop_requested
    _local.dispatcher, _local.pid = dispatcher, pid
    return dispatcher


class DatabaseUnavailable(OutboxError):
    """A dispatch could not reach the outbox: the task ends FAILED in Flower.

    Listed in the tasks' `throws`: Celery records the failure (state, one-line reason) and logs
    it without a traceback. The task is only a wake-up, acked like any other, never retried:
    the rows are the truth, and the sweeper wakes dispatch again once the database is back.
    """


def _unavailable(what: str, e: OperationalError) -> DatabaseUnavailable:
    # Not chained: the driver's message carries the SQL and its parameters (payloads, e-mails)
    # into the result, the task event and Flower.
    return DatabaseUnavailable(f"{what}: database unavailable ({type(e.orig).__name__})")


_in_pool_child = False
_main_pid: int | None = None
_node_name: str | None = None


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    global _main_pid, _node_name
    _main_pid = os.getpid()
    _node_name = getattr(sender, "hostname", None)


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    # The solo pool sends this signal in the main process, whose SIGTERM handler is Celery's.
    global _in_pool_child
    _in_pool_child = os.getpid() != _main_pid
    configure_logging(get_settings())


@contextmanager
def _sigterm_finishes_the_batch() -> Iterator[None]:
    """In a prefork child, make SIGTERM finish the batch in flight instead of killing it.

    billiard makes a child exit on SIGTERM, mid-request, leaving its rows to wait out their
    lease (celery/celery#4795), and systemd or `kill 0` signal the whole process group. The
    handler is ours only while a dispatch runs: an idle child still exits on SIGTERM, and a
    signal caught during one run does not silence the next.
    """
    if not _in_pool_child or threading.current_thread() is not threading.main_thread():
        yield
        return
    _stop_requested.clear()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _stop_requested.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    # Solo and thread pools run tasks in this process: let the current batch finish and stop.
    _stop_requested.set()


@app.task(name=DISPATCH_TASK, throws=(DatabaseUnavailable,))
def dispatch() -> dict[str, Any]:
    """Claim and send due rows until none are due or the time budget is spent."""
    dispatcher = get_dispatcher()
    try:
        with _sigterm_finishes_the_batch():
            report = dispatcher.run()
    except OperationalError as e:
        # Nothing was lost: claimed rows come back when their lease runs out.
        log.error("dispatch stopped: database unavailable (%s)", type(e.orig).__name__)
        raise _unavailable("dispatch stopped", e) from None
    if report.budget_spent and not dispatcher.stopping.is_set():
        # More may be due: hand over to a fresh task instead of holding this slot forever.
        dispatch.apply_async(expires=WAKEUP_EXPIRES_SECONDS)
    return report.as_result()
