"""The Celery application: `celery -A spotler_outbox.worker worker|flower` finds `app` here.

Configuration is read from the settings only when Celery first needs it, never at import.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from spotler_outbox.worker.listen import ListenStep
from spotler_outbox.worker.sweeper import Sweeper

app = Celery("spotler_outbox", include=["spotler_outbox.worker.tasks"])


class _LazyConfig:
    """Celery reads attributes from this object the first time `app.conf` is touched."""

    def __getattr__(self, name: str) -> Any:
        config = celery_config()
        if name in config:
            return config[name]
        raise AttributeError(name)

    def __dir__(self) -> list[str]:
        return list(celery_config())


def celery_config() -> dict[str, Any]:
    from spotler_outbox.models.settings import get_settings

    settings = get_settings()
    lease = settings.lease_seconds
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # A task is only a wake-up; the row is the truth. Acking late and re-queueing on a lost
        # worker means a crash never loses the wake-up, and running one twice costs a claim
        # that finds nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per process: a prefetched wake-up would wait behind a long
        # dispatch while another process sits idle.
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": _transport_options(settings.broker_url, lease),
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        # A dispatch starts no batch after its budget and sends nothing once a claim has run
        # a lease's length (its lease then reaches at most two leases past its start); the
        # record of an answer is retried through a database outage for one lease more
        # (models.ledger). The hard limit only catches a hang. No soft limit: its exception
        # can land between Spotler's 2xx and the commit that records it.
        "task_time_limit": (settings.dispatch_time_budget + 3 * lease
                            + settings.connect_timeout + settings.read_timeout),
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "timezone": "UTC",
    }


def _transport_options(broker_url: str, lease: float) -> dict[str, Any]:
    if broker_url.split("+", 1)[0] in ("sqla", "sqlalchemy"):
        # kombu's SQLAlchemy transport hands these to create_engine(), which takes none of them.
        return {}
    # Redis re-delivers an unacked message after the visibility timeout; keep it far above
    # the longest claim, so a slow dispatch is not run twice in parallel by redelivery.
    return {"visibility_timeout": max(3600, int(lease * 10))}


app.config_from_object(_LazyConfig())
app.steps["worker"].add(ListenStep)
# The safety-net sweep and retention run as timers inside every worker, not as beat tasks.
app.steps["worker"].add(Sweeper)
