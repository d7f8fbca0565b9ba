"""Thin Celery tasks over worker.dispatch. Arguments are never payloads (Flower shows them)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery.signals import worker_process_init, worker_shutting_down

from models import store
from models.database import make_engine
from models.settings import get_settings
from models.wakeup import DISPATCH_TASK, WAKEUP_EXPIRES_SECONDS
from worker.celery import app
from worker.client import SpotlerClient
from worker.dispatch import Dispatcher, DispatchReport, utc_now
from worker.logs import configure_logging

log = logging.getLogger("spotler_outbox.tasks")

_dispatcher: Dispatcher | None = None
_dispatcher_pid: int | None = None


def get_dispatcher() -> Dispatcher:
    """One dispatcher per process, built after the fork (connections must not be shared)."""
    global _dispatcher, _dispatcher_pid
    if _dispatcher is None or _dispatcher_pid != os.getpid():
        settings = get_settings()
        _dispatcher = Dispatcher(
            make_engine(settings.database_url), SpotlerClient(settings), settings,
            worker_name=f"{socket.gethostname()}:{os.getpid()}",
        )
        _dispatcher_pid = os.getpid()
    return _dispatcher


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    configure_logging(get_settings())


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    # Solo and thread pools run tasks in this process: let the current batch finish and stop.
    if _dispatcher is not None:
        _dispatcher.stopping.set()


@app.task(name=DISPATCH_TASK)
def dispatch() -> dict[str, Any]:
    """Claim and send due rows until none are due or the time budget is spent."""
    dispatcher = get_dispatcher()
    report = dispatcher.run()
    if report.budget_spent and not dispatcher.stopping.is_set():
        # More may be due: hand over to a fresh task instead of holding this slot forever.
        dispatch.apply_async(expires=WAKEUP_EXPIRES_SECONDS)
    return _summary(report)


@app.task(name="spotler_outbox.sweep")
def sweep() -> dict[str, Any]:
    """Every few seconds: re-check paused credentials and wake dispatch for any due row.

    This alone guarantees progress when wake-up messages are lost (broker flushed, enqueue by
    plain SQL, worker killed).
    """
    dispatcher = get_dispatcher()
    if dispatcher.recheck_credentials() is not True:
        return {"paused": True, "woken": 0}
    with dispatcher.engine.begin() as conn:
        due = store.any_due(conn, utc_now())
    woken = dispatcher.settings.sweep_fanout if due else 0
    for _ in range(woken):
        dispatch.apply_async(expires=WAKEUP_EXPIRES_SECONDS)
    return {"paused": False, "woken": woken}


def _summary(report: DispatchReport) -> dict[str, Any]:
    return {"claimed": report.claimed, "delivered": report.delivered, "retried": report.retried,
            "failed": report.failed, "released": report.released, "requests": report.requests,
            "paused": report.paused, "held": report.held}
