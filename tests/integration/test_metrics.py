"""The Prometheus exporter, scraped over HTTP, against each of the three databases."""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine, make_url

from spotler_outbox.models import claims, control, operations, tables
from spotler_outbox.models.claims import AttemptRecord, ClaimedRow
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import reset_settings
from spotler_outbox.worker.console import exporter as metrics
from spotler_outbox.worker.console.cli import main
from tests.integration.fixtures import row
from tests.integration.fixtures import seed_row as seed

ROOT = Path(__file__).resolve().parents[2]
events = tables.events
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ago(**delta: float) -> dt.datetime:
    return now() - dt.timedelta(**delta)


def serve(engine: Engine) -> Iterator[str]:
    server, thread = metrics.start_exporter(engine, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def exporter(database_url: str) -> Iterator[str]:
    engine = metrics.exporter_engine(database_url)
    try:
        yield from serve(engine)
    finally:
        engine.dispose()


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def attempt(engine: Engine, row_id: int, started: dt.datetime, duration_ms: int,
            outcome: str, event_count: int = 1) -> None:
    record = AttemptRecord(started_at=started, duration_ms=duration_ms, event_count=event_count,
                           http_status=200 if outcome == "delivered" else 503, outcome=outcome,
                           error_class=None, response_excerpt=None, worker="w1")
    with engine.begin() as conn:
        claims.record_attempt(conn, record, [ClaimedRow(row_id, "", "", 1, started)])


def seed_busy_outbox(engine: Engine) -> int:
    """Rows of every kind, a pause and a hold; returns a delivered row's id."""
    seed(engine, "P-OLD", created_at=ago(minutes=40), next_attempt_at=ago(minutes=30))
    seed(engine, "P-NEWER", created_at=ago(minutes=20), next_attempt_at=ago(minutes=20))
    # Older still, but waiting out a backoff: not due, so not the oldest due row.
    seed(engine, "P-BACKOFF", created_at=ago(hours=2), next_attempt_at=ago(minutes=-30))
    seed(engine, "F-1", status="failed", last_error="rejected")
    seed(engine, "F-2", status="failed", last_error="gave up")
    delivered = seed(engine, "D-1", status="delivered", delivered_at=ago(minutes=1))
    with engine.begin() as conn:
        control.pause(conn, reason="HTTP 401: bad key", now=now(), check_at=ago(minutes=-1))
        control.hold_until(conn, now=now(), not_before=ago(seconds=-120))
    return delivered


OUTCOMES = ("delivered", "retryable", "rate_limited", "auth_failed", "redirected", "rejected",
            "partial")
# Hand-labelled: (outcome, events in the request, duration in ms).
LABELLED_ATTEMPTS = [("delivered", 3, 40), ("delivered", 2, 200), ("retryable", 5, 3000),
                     ("rejected", 1, 8)]


def requests_by_outcome(samples: Samples) -> dict[str, float]:
    return {o: value(samples, "spotler_outbox_requests_total", outcome=o) for o in OUTCOMES}


def test_a_scrape_reports_backlog_failures_pause_and_hold(exporter: str, engine: Engine) -> None:
    seed_busy_outbox(engine)

    samples = scrape(exporter)

    assert value(samples, "spotler_outbox_up") == 1
    assert {status: value(samples, "spotler_outbox_rows", status=status) for status in
            ("pending", "in_flight", "delivered", "failed")} == {
        "pending": 3, "in_flight": 0, "delivered": 1, "failed": 2}
    assert 40 * 60 <= value(samples, "spotler_outbox_oldest_due_age_seconds") < 41 * 60
    assert value(samples, "spotler_outbox_paused") == 1
    assert 100 < value(samples, "spotler_outbox_rate_limited_until_seconds") <= 120


def test_counters_start_at_zero_for_every_outcome_and_count_each_later_attempt_once(
    exporter: str, engine: Engine
) -> None:
    row_id = seed_busy_outbox(engine)
    attempt(engine, row_id, ago(minutes=1), 100, "delivered", 7)  # before the exporter's start

    first = scrape(exporter)
    for outcome, events_in_it, ms in LABELLED_ATTEMPTS:
        attempt(engine, row_id, ago(seconds=1), ms, outcome, events_in_it)
    second, third = scrape(exporter), scrape(exporter)

    assert requests_by_outcome(first) == dict.fromkeys(OUTCOMES, 0)
    assert value(first, "spotler_outbox_delivered_events_total") == 0
    assert value(first, "spotler_outbox_request_duration_seconds_count") == 0
    for later in (second, third):
        assert requests_by_outcome(later) == {**dict.fromkeys(OUTCOMES, 0), "delivered": 2,
                                              "retryable": 1, "rejected": 1}
        assert value(later, "spotler_outbox_delivered_events_total") == 5
        assert value(later, "spotler_outbox_request_duration_seconds_count") == 4
        assert value(later, "spotler_outbox_request_duration_seconds_sum") == pytest.approx(3.248)
        assert {le: value(later, "spotler_outbox_request_duration_seconds_bucket", le=le)
                for le in ("0.01", "0.05", "0.25", "2.5", "5.0", "+Inf")} == {
            "0.01": 1, "0.05": 2, "0.25": 3, "2.5": 3, "5.0": 4, "+Inf": 4}


def test_a_purge_of_delivered_rows_and_their_attempts_lowers_no_counter(
    exporter: str, engine: Engine
) -> None:
    row_id = seed_busy_outbox(engine)
    scrape(exporter)
    attempt(engine, row_id, ago(seconds=1), 50, "delivered", 4)
    # The newest attempt is a pending row's, which no purge deletes.
    pending = int(row(engine, "P-OLD").id)
    attempt(engine, pending, ago(seconds=1), 50, "retryable", 1)
    before = scrape(exporter)

    assert operations.purge(engine, delivered_before=now()) == (1, 1)
    after_purge = scrape(exporter)
    later = seed(engine, "D-2", status="delivered", delivered_at=now())
    attempt(engine, later, now(), 50, "delivered", 1)
    after_more = scrape(exporter)

    assert value(before, "spotler_outbox_delivered_events_total") == 4
    assert value(after_purge, "spotler_outbox_delivered_events_total") == 4
    assert value(after_purge, "spotler_outbox_requests_total", outcome="delivered") == 1
    # The purged row stays as its compact record (retention keeps exactly-once): still delivered.
    assert value(after_purge, "spotler_outbox_rows", status="delivered") == 1
    assert value(after_more, "spotler_outbox_delivered_events_total") == 5
    assert value(after_more, "spotler_outbox_requests_total", outcome="delivered") == 2


def test_an_attempt_that_commits_after_a_later_one_is_still_counted(
    server_database_url: str,
) -> None:
    engine = metrics.exporter_engine(server_database_url)
    try:
        row_id = seed(engine, "D-1", status="delivered", delivered_at=now())
        for url in serve(engine):
            scrape(url)
            with engine.connect() as slow:
                slow_tx = slow.begin()
                attempt_in(slow, row_id, "retryable")  # takes the lower id, commits last
                attempt(engine, row_id, now(), 10, "delivered")
                while_open = scrape(url)
                slow_tx.commit()
            after = scrape(url)
    finally:
        engine.dispose()

    assert value(while_open, "spotler_outbox_requests_total", outcome="retryable") == 0
    assert value(while_open, "spotler_outbox_requests_total", outcome="delivered") == 1
    assert value(after, "spotler_outbox_requests_total", outcome="retryable") == 1
    assert value(after, "spotler_outbox_requests_total", outcome="delivered") == 1


def attempt_in(conn: sa.Connection, row_id: int, outcome: str) -> None:
    record = AttemptRecord(started_at=now(), duration_ms=10, event_count=1, http_status=503,
                           outcome=outcome, error_class=None, response_excerpt=None, worker="w")
    claims.record_attempt(conn, record, [ClaimedRow(row_id, "", "", 1, now())])


def test_every_family_is_one_kind_and_none_repeats_another(exporter: str) -> None:
    text = requests.get(exporter, timeout=10).text
    kinds = {family.name: family.type for family in text_string_to_metric_families(text)}

    assert kinds == {
        "spotler_outbox_up": "gauge", "spotler_outbox_rows": "gauge",
        "spotler_outbox_oldest_due_age_seconds": "gauge", "spotler_outbox_paused": "gauge",
        "spotler_outbox_rate_limited_until_seconds": "gauge",
        "spotler_outbox_requests": "counter", "spotler_outbox_delivered_events": "counter",
        "spotler_outbox_request_duration_seconds": "histogram",
        # Per Spotler account (several stores): tests/integration/test_accounts.py.
        "spotler_outbox_account_rows": "gauge", "spotler_outbox_account_paused": "gauge",
        "spotler_outbox_account_rate_limited_until_seconds": "gauge",
        "spotler_outbox_account_without_credentials": "gauge",
    }


def test_an_empty_outbox_reports_every_status_and_zeros(exporter: str) -> None:
    samples = scrape(exporter)

    assert value(samples, "spotler_outbox_up") == 1
    for status in ("pending", "in_flight", "delivered", "failed"):
        assert value(samples, "spotler_outbox_rows", status=status) == 0
    for name in ("spotler_outbox_oldest_due_age_seconds", "spotler_outbox_paused",
                 "spotler_outbox_rate_limited_until_seconds"):
        assert value(samples, name) == 0, name


def test_a_hold_that_has_passed_and_a_resumed_pause_report_zero(
    exporter: str, engine: Engine
) -> None:
    with engine.begin() as conn:
        control.pause(conn, reason="HTTP 403", now=ago(minutes=5), check_at=ago(minutes=4))
        control.resume(conn, now=ago(minutes=1))
        control.hold_until(conn, now=ago(minutes=3), not_before=ago(minutes=2))

    samples = scrape(exporter)

    assert value(samples, "spotler_outbox_paused") == 0
    assert value(samples, "spotler_outbox_rate_limited_until_seconds") == 0


def unreachable_url(database_url: str, tmp_path: Path) -> str:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///{tmp_path / 'no-such-dir' / 'outbox.db'}"
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return url.set(port=port, password="s3cret-pw").render_as_string(hide_password=False)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_a_scrape_with_the_database_unreachable_reports_down_logs_one_line_and_keeps_serving(
    database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(unreachable_url(database_url, tmp_path))
    logs = Lines()
    logger = logging.getLogger("spotler_outbox.metrics")
    logger.addHandler(logs)
    try:
        for url in serve(engine):
            first, second = scrape(url), scrape(url)
    finally:
        logger.removeHandler(logs)
        engine.dispose()

    for samples in (first, second):
        assert samples == {("spotler_outbox_up", frozenset()): 0}
    assert len(logs.lines) == 2
    assert all("\n" not in line and "s3cret-pw" not in line for line in logs.lines)
    assert "cannot read the outbox" in logs.lines[0]


# --- the command ---------------------------------------------------------------------------

@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("OUTBOX_WAKEUP", "false")
    reset_settings()
    yield monkeypatch
    reset_settings()


def test_the_metrics_command_refuses_a_port_in_use_naming_it(
    database_url: str, cli_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_env.setenv("OUTBOX_DATABASE_URL", database_url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["metrics", "--host", "127.0.0.1", "--port", str(port)])
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_metrics_command_refuses_a_missing_sqlite_file_instead_of_creating_it(
    tmp_path: Path, cli_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.db"
    cli_env.setenv("OUTBOX_DATABASE_URL", f"sqlite:///{missing}")
    assert main(["metrics", "--port", "0"]) == 2
    assert "no SQLite outbox" in capsys.readouterr().err
    assert not missing.exists()
