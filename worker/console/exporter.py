"""`spotler-outbox metrics`: a Prometheus exporter that reads the outbox on every scrape.

Several workers share the outbox, so the gauges (backlog, pause, hold) are read from the
database on each scrape. The counters and the duration histogram are fed from
`delivery_attempts`: each attempt is counted once, in this process, when a scrape first sees
it, so a purge of old attempts never lowers them; they start at 0 with the exporter, every
outcome present. When the database cannot be read the scrape still answers, with
spotler_outbox_up 0, so Prometheus can tell "outbox unreadable" from "exporter gone" (its own
`up` series).
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

import sqlalchemy as sa
from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
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
from spotler_outbox.models.metrics_queries import (
    AttemptSample,
    attempts_after,
    highest_attempt_id,
)
from spotler_outbox.models.operations import (
    AccountSummary,
    StatusSummary,
    accounts_summary,
    status_summary,
)
from spotler_outbox.models.settings import Settings, get_settings
from spotler_outbox.models.tables import DUE_STATUSES
from spotler_outbox.worker.console.attempt_feed import FeedPosition, advance
from spotler_outbox.worker.console.outbox_commands import database_url
from spotler_outbox.worker.spotler.errors import OUTCOMES

log = logging.getLogger("spotler_outbox.metrics")

# Seconds; a request to Spotler on loopback takes milliseconds, over the internet tens to
# hundreds of them, and the read timeout (30 s by default) ends it in the last bucket.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# An attempt's transaction commits within seconds of taking its id; far above that, a missing
# id was burnt by a rollback and is no longer looked for.
GAP_GRACE = dt.timedelta(minutes=10)
# Prometheus gives up on a scrape after 10 s by default; an unreachable host must fail sooner
# than that, or the scrape threads pile up behind the connection pool.
CONNECT_TIMEOUT_SECONDS = 5
UP_HELP = "1 when the outbox database could be read."


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class AttemptCounters:
    """Requests per outcome, delivered events and request durations since the exporter began."""

    def __init__(self) -> None:
        self.position: FeedPosition | None = None
        self.requests = dict.fromkeys(OUTCOMES, 0)
        self.delivered_events = 0
        self.bucket_counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0

    def read(self, conn: sa.Connection, now: dt.datetime) -> None:
        """Count the attempts recorded since the last read (none on the first: start at 0)."""
        highest = highest_attempt_id(conn)
        if self.position is None or highest < self.position.highest_seen:
            # At the start; or on SQLite, which hands out the ids of deleted rows again when
            # the newest attempts were purged (no deliveries for the whole retention period).
            self.position = FeedPosition(highest)
            return
        gaps = [(g.first, g.last) for g in self.position.gaps]
        samples = attempts_after(conn, self.position.highest_seen, gaps)
        for sample in samples:
            self.count(sample)
        self.position = advance(self.position, (s.id for s in samples), now, GAP_GRACE)

    def count(self, sample: AttemptSample) -> None:
        self.requests[sample.outcome] = self.requests.get(sample.outcome, 0) + 1
        if sample.outcome == "delivered":
            self.delivered_events += sample.event_count
        seconds = sample.duration_ms / 1000
        self.bucket_counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds

    def families(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "spotler_outbox_requests", "Requests to Spotler by outcome, counted from "
            "delivery_attempts since the exporter started.", labels=["outcome"])
        for outcome, count in sorted(self.requests.items()):
            requests.add_metric([outcome], count)
        yield requests
        yield CounterMetricFamily(
            "spotler_outbox_delivered_events", "Events Spotler took (in requests with "
            "outcome delivered) since the exporter started.", value=self.delivered_events)
        cumulative, buckets = 0, []
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), self.bucket_counts,
                                strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "spotler_outbox_request_duration_seconds", "Duration of requests to Spotler, "
            "since the exporter started.", buckets=buckets, sum_value=self.duration_sum)


def outbox_families(s: StatusSummary, now: dt.datetime) -> Iterable[Metric]:
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


def account_families(accounts: list[AccountSummary], now: dt.datetime,
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
    for a in accounts:
        label = [default_name if a.account == DEFAULT_ACCOUNT else a.account]
        for status, count in a.counts.items():
            rows.add_metric([*label, status], count)
        paused.add_metric(label, 1 if a.control.paused else 0)
        left = (a.control.not_before - now).total_seconds() if a.control.not_before else 0.0
        held.add_metric(label, max(left, 0.0))
        if credentials is not None:
            waiting = sum(a.counts[status] for status in DUE_STATUSES)
            missing.add_metric(label, int(a.account not in credentials and waiting > 0))
    # A family without samples (no accounts, credentials unknown) is left out, not sent empty.
    yield from (family for family in (rows, paused, held, missing) if family.samples)


class OutboxCollector(Collector):
    def __init__(self, engine: Engine, clock: Callable[[], dt.datetime] = utc_now,
                 settings: Settings | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings  # tells which accounts have credentials
        self.attempts = AttemptCounters()
        # Scrapes may overlap (one thread each): one of them at a time feeds the counters.
        self.lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not touch the database

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            now = self.clock()
            try:
                with self.engine.begin() as conn:
                    summary = status_summary(conn, now)
                    accounts = accounts_summary(conn)
                    self.attempts.read(conn, now)
            except sa.exc.SQLAlchemyError as e:
                log.warning("cannot read the outbox, exporting spotler_outbox_up 0: %s",
                            describe_database_error(e, self.engine.url))
                return [_gauge("spotler_outbox_up", UP_HELP, 0)]
            return [_gauge("spotler_outbox_up", UP_HELP, 1), *outbox_families(summary, now),
                    *self.attempts.families(),
                    *account_families(accounts, now, self.settings)]


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
    engine = exporter_engine(database_url(settings))
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
