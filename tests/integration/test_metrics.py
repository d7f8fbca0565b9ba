"""The Prometheus exporter, scraped over HTTP, against each of the three databases."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine, make_url

from spotler_outbox.models import claims, control, tables
from spotler_outbox.models.claims import AttemptRecord, ClaimedRow
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.operations import RATE_WINDOW
from spotler_outbox.models.settings import reset_settings
from spotler_outbox.worker.console import exporter as metrics
from spotler_outbox.worker.console.cli import main
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
            outcome: str) -> None:
    record = AttemptRecord(started_at=started, duration_ms=duration_ms, event_count=1,
                           http_status=200 if outcome == "delivered" else 503, outcome=outcome,
                           error_class=None, response_excerpt=None, worker="w1")
    with engine.begin() as conn:
        claims.record_attempt(conn, record, [ClaimedRow(row_id, "", "", 1, started)])


def seed_busy_outbox(engine: Engine) -> None:
    seed(engine, "P-OLD", created_at=ago(minutes=40), next_attempt_at=ago(minutes=30))
    seed(engine, "P-NEWER", created_at=ago(minutes=20), next_attempt_at=ago(minutes=20))
    # Older still, but waiting out a backoff: not due, so not the oldest due row.
    seed(engine, "P-BACKOFF", created_at=ago(hours=2), next_attempt_at=ago(minutes=-30))
    seed(engine, "F-1", status="failed", last_error="rejected")
    seed(engine, "F-2", status="failed", last_error="gave up")
    delivered = seed(engine, "D-1", status="delivered", delivered_at=ago(minutes=1))
    attempt(engine, delivered, ago(minutes=1), 200, "delivered")
    attempt(engine, delivered, ago(minutes=2), 800, "retryable")
    attempt(engine, delivered, ago(hours=1), 5000, "rejected")  # outside the 5 minutes
    with engine.begin() as conn:
        control.pause(conn, reason="HTTP 401: bad key", now=now(), check_at=ago(minutes=-1))
        control.hold_until(conn, now=now(), not_before=ago(seconds=-120))


def test_a_scrape_reports_backlog_failures_pause_hold_attempts_and_durations(
    exporter: str, engine: Engine
) -> None:
    seed_busy_outbox(engine)

    samples = scrape(exporter)

    assert value(samples, "spotler_outbox_up") == 1
    assert {status: value(samples, "spotler_outbox_rows", status=status) for status in
            ("pending", "in_flight", "delivered", "failed")} == {
        "pending": 3, "in_flight": 0, "delivered": 1, "failed": 2}
    assert 40 * 60 <= value(samples, "spotler_outbox_oldest_due_age_seconds") < 41 * 60
    assert value(samples, "spotler_outbox_paused") == 1
    assert 100 < value(samples, "spotler_outbox_rate_limited_until_seconds") <= 120
    assert value(samples, "spotler_outbox_delivered_total") == 1
    assert value(samples, "spotler_outbox_failed_rows") == 2
    assert {o: value(samples, "spotler_outbox_attempts_total", outcome=o) for o in
            ("delivered", "retryable", "rejected")} == {
        "delivered": 1, "retryable": 1, "rejected": 1}
    assert [value(samples, "spotler_outbox_request_duration_seconds", quantile=q)
            for q in ("0.5", "0.9", "0.99")] == [0.2, 0.8, 0.8]
    assert value(samples, "spotler_outbox_requests_last_5m") == 2
    assert value(samples, "spotler_outbox_deliveries_last_5m") == 1


def test_an_empty_outbox_reports_zeros_and_no_durations(exporter: str) -> None:
    samples = scrape(exporter)

    assert value(samples, "spotler_outbox_up") == 1
    assert value(samples, "spotler_outbox_rows", status="pending") == 0
    for name in ("spotler_outbox_oldest_due_age_seconds", "spotler_outbox_paused",
                 "spotler_outbox_rate_limited_until_seconds", "spotler_outbox_failed_rows",
                 "spotler_outbox_deliveries_last_5m", "spotler_outbox_requests_last_5m"):
        assert value(samples, name) == 0, name
    assert math.isnan(value(samples, "spotler_outbox_request_duration_seconds", quantile="0.5"))


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


def test_the_5m_series_cover_the_rate_window_of_the_status_command() -> None:
    assert dt.timedelta(minutes=metrics.WINDOW_MINUTES) == RATE_WINDOW


def test_quantiles_are_nearest_rank_over_the_sorted_durations() -> None:
    values = list(range(1, 101))
    assert [metrics.quantile(values, q) for q in (0.5, 0.9, 0.99, 1.0)] == [50, 90, 99, 100]
    assert metrics.quantile([7], 0.99) == 7
    assert math.isnan(metrics.quantile([], 0.5))


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


# --- the alert rules -----------------------------------------------------------------------

PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "sum", "min", "max", "avg", "group",
                "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values"}
# Series Prometheus makes itself for every scrape.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def metric_names(expr: str) -> set[str]:
    """The series an expression reads: identifiers that are no function, keyword or label."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()\b", bare))
    functions = set(re.findall(r"([A-Za-z_]+)\s*\(", bare))
    return names - functions - PROMQL_WORDS


def test_every_alert_rule_reads_only_series_the_exporter_exports(
    exporter: str, engine: Engine
) -> None:
    seed_busy_outbox(engine)
    exported = {name for name, _ in scrape(exporter)}
    rules = yaml.safe_load((ROOT / "ops" / "prometheus-alerts.yml").read_text())
    config = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}

    alerts = {rule["alert"]: rule["expr"] for group in rules["groups"]
              for rule in group["rules"]}
    assert len(alerts) >= 4
    for alert, expr in alerts.items():
        names = metric_names(str(expr))
        assert names, f"{alert}: no metric found in {expr!r}"
        assert names <= exported | PROMETHEUS_SERIES, f"{alert} reads {names - exported}"
        for job in re.findall(r'job\s*=\s*"([^"]+)"', str(expr)):
            assert job in jobs, f"{alert} selects job {job!r}, not scraped by prometheus.yml"
    assert "prometheus-alerts.yml" in config["rule_files"]
