"""`spotler-outbox metrics`: a Prometheus exporter that reads the outbox on every scrape.

The outbox rows are the truth, and several workers share them, so nothing is counted in
process: each scrape asks the database. When the database cannot be read the scrape still
answers, with spotler_outbox_up 0, so Prometheus can tell "outbox unreadable" from "exporter
gone" (its own `up` series).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

import sqlalchemy as sa
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import event
from sqlalchemy.engine import Engine

from spotler_outbox.models.accounts import DEFAULT_ACCOUNT, account_keys
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import (
    describe_database_error,
    make_engine,
    require_existing_sqlite,
    shown_url,
)
from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.metrics_queries import MetricsSnapshot, read_snapshot
from spotler_outbox.models.settings import Settings, get_settings
from spotler_outbox.models.tables import DUE_STATUSES

log = logging.getLogger("spotler_outbox.metrics")

QUANTILES = (0.5, 0.9, 0.99)
# The *_last_5m series cover models.operations.RATE_WINDOW (what `status` shows too); the
# names are spelled out so that alert rules can be checked against them.
WINDOW_MINUTES = 5
# Prometheus gives up on a scrape after 10 s by default; an unreachable host must fail sooner
# than that, or the scrape threads pile up behind the connection pool.
CONNECT_TIMEOUT_SECONDS = 5


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def quantile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest rank: always one of the observed values, NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(q * len(sorted_values)) - 1, 0)
    return float(sorted_values[rank])


def families(snap: MetricsSnapshot, now: dt.datetime) -> Iterable[Metric]:
    s = snap.summary
    rows = GaugeMetricFamily("spotler_outbox_rows", "Outbox rows per status.", labels=["status"])
    for status, count in s.counts.items():
        rows.add_metric([status], count)
    yield rows
    oldest = (now - s.oldest_due_created_at).total_seconds() if s.oldest_due_created_at else 0.0
    yield _gauge("spotler_outbox_oldest_due_age_seconds",
                 "Age (since created) of the oldest row due for sending; 0 when none is due.",
                 max(oldest, 0.0))
    yield _gauge("spotler_outbox_paused",
                 "1 while an account's dispatch is paused after Spotler refused its credentials.",
                 1 if s.control.paused else 0)
    held = (s.control.not_before - now).total_seconds() if s.control.not_before else 0.0
    yield _gauge("spotler_outbox_rate_limited_until_seconds",
                 "Seconds until Spotler's Retry-After hold ends; 0 when there is none.",
                 max(held, 0.0))
    # Counts of rows still in the outbox: a purge lowers them, which Prometheus reads as a reset.
    yield CounterMetricFamily("spotler_outbox_delivered_total",
                              "Delivered rows in the outbox (purged rows no longer count).",
                              value=s.counts.get("delivered", 0))
    yield _gauge("spotler_outbox_failed_rows", "Rows parked as failed, waiting for an operator.",
                 s.counts.get("failed", 0))
    attempts = CounterMetricFamily("spotler_outbox_attempts_total",
                                   "Requests to Spotler recorded in delivery_attempts, by "
                                   "outcome (purged attempts no longer count).",
                                   labels=["outcome"])
    for outcome, count in sorted(snap.attempts_by_outcome.items()):
        attempts.add_metric([outcome], count)
    yield attempts
    durations = GaugeMetricFamily("spotler_outbox_request_duration_seconds",
                                  "Quantiles of request durations over the last 5 minutes; "
                                  "NaN without requests.", labels=["quantile"])
    for q in QUANTILES:
        durations.add_metric([str(q)], quantile(snap.recent_durations_ms, q) / 1000)
    yield durations
    yield _gauge("spotler_outbox_requests_last_5m",
                 "Requests to Spotler started in the last 5 minutes.",
                 len(snap.recent_durations_ms))
    yield _gauge("spotler_outbox_deliveries_last_5m",
                 "Rows delivered in the last 5 minutes.", s.delivered_last_window)


def account_families(snap: MetricsSnapshot, now: dt.datetime,
                     settings: Settings | None) -> Iterable[Metric]:
    """The per-account series: rows, pause, hold, and accounts without credentials."""
    default_name = (settings.account if settings else "") or "default"
    credentials: set[str] | None = None
    if settings is not None:
        try:
            credentials = set(account_keys(settings).accounts)
        except ConfigurationError as e:
            log.warning("cannot tell which accounts have credentials: %s", e)
    rows = GaugeMetricFamily("spotler_outbox_account_rows", "Outbox rows per account and status.",
                             labels=["account", "status"])
    paused = GaugeMetricFamily("spotler_outbox_account_paused",
                               "1 while the account's dispatch is paused (401/403).",
                               labels=["account"])
    held = GaugeMetricFamily("spotler_outbox_account_rate_limited_until_seconds",
                             "Seconds until the account's 429 hold ends; 0 when none.",
                             labels=["account"])
    missing = GaugeMetricFamily("spotler_outbox_account_without_credentials",
                                "1 when the account has rows to send but no credentials.",
                                labels=["account"])
    for a in snap.accounts:
        label = [default_name if a.account == DEFAULT_ACCOUNT else a.account]
        for status, count in a.counts.items():
            rows.add_metric([*label, status], count)
        paused.add_metric(label, 1 if a.control.paused else 0)
        left = (a.control.not_before - now).total_seconds() if a.control.not_before else 0.0
        held.add_metric(label, max(left, 0.0))
        if credentials is not None:
            waiting = sum(a.counts[status] for status in DUE_STATUSES)
            missing.add_metric(label, int(a.account not in credentials and waiting > 0))
    yield from (rows, paused, held, missing)


class OutboxCollector(Collector):
    def __init__(self, engine: Engine, clock: Callable[[], dt.datetime] = utc_now,
                 settings: Settings | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings  # tells which accounts have credentials

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not touch the database

    def collect(self) -> Iterable[Metric]:
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                snap = read_snapshot(conn, now)
        except sa.exc.SQLAlchemyError as e:
            log.warning("cannot read the outbox, exporting spotler_outbox_up 0: %s",
                        describe_database_error(e, self.engine.url))
            yield _gauge("spotler_outbox_up", "1 when the outbox database could be read.", 0)
            return
        yield _gauge("spotler_outbox_up", "1 when the outbox database could be read.", 1)
        yield from families(snap, now)
        yield from account_families(snap, now, self.settings)


def exporter_engine(url: str) -> Engine:
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        try:
            require_existing_sqlite(engine)
        except ConfigurationError:
            engine.dispose()
            raise
        return engine

    @event.listens_for(engine, "do_connect")
    def _connect_timeout(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)

    return engine


def start_exporter(engine: Engine, host: str, port: int, settings: Settings | None = None
                   ) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics from a daemon thread; port 0 picks a free port (server.server_port)."""
    registry = CollectorRegistry()
    registry.register(OutboxCollector(engine, settings=settings or get_settings()))
    return start_http_server(port, addr=host, registry=registry)


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    engine = exporter_engine(settings.database_url)
    try:
        try:
            server, thread = start_exporter(engine, args.host, args.port, settings)
        except OSError as e:
            raise ConfigurationError(f"cannot listen on {args.host}:{args.port}: "
                                     f"{e.strerror or e}") from e
        print(f"Prometheus metrics on http://{args.host}:{server.server_port}/metrics for "
              f"{shown_url(settings.database_url)} (Ctrl-C stops)", flush=True)
        _serve_until_stopped(server, thread)
    finally:
        engine.dispose()
    return 0


def _serve_until_stopped(server: WSGIServer, thread: threading.Thread) -> None:
    in_main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM (docker stop) ends the wait like Ctrl-C, so the socket is closed on the way out.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main_thread else None
    try:
        thread.join()
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: the one way to stop, not an error
    finally:
        server.shutdown()
        server.server_close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
