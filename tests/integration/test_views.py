"""The operator views of revision 0003 give the right numbers on each of the three databases."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox import migrations
from spotler_outbox.models import claims, tables
from spotler_outbox.models.claims import AttemptRecord, ClaimedRow
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.tables import UTCDateTime
from tests.conftest import BACKENDS, TEST_DB, backend_url
from tests.integration.fixtures import seed_row as seed

events = tables.events
T = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
VIEWS = {"outbox_status_summary", "outbox_failures"}


def at(minutes: int) -> dt.datetime:
    return T + dt.timedelta(minutes=minutes)


def attempt(engine: Engine, row_id: int, number: int, started: dt.datetime, **values: Any) -> None:
    record = AttemptRecord(**{
        "started_at": started, "duration_ms": 120, "event_count": 1, "http_status": 503,
        "outcome": "retryable", "error_class": "RetryableError", "response_excerpt": "busy",
        "worker": "w1", **values})
    with engine.begin() as conn:
        claims.record_attempt(conn, record, [ClaimedRow(row_id, "", "", number, started)])


def view_rows(engine: Engine, sql: str, *stamps: str) -> list[dict[str, Any]]:
    # Typed as UTCDateTime so SQLite's strings and MariaDB's naive values come back as UTC.
    query = sa.text(sql).columns(**{name: UTCDateTime() for name in stamps})
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def test_status_summary_has_one_row_per_status_with_counts_and_oldest_and_newest_times(
    engine: Engine,
) -> None:
    seed(engine, "P-1", created_at=at(0), next_attempt_at=at(30), updated_at=at(5))
    seed(engine, "P-2", created_at=at(10), next_attempt_at=at(20), updated_at=at(40))
    seed(engine, "D-1", status="delivered", created_at=at(-60), next_attempt_at=at(-60),
         updated_at=at(-50), delivered_at=at(-50))
    seed(engine, "F-1", status="failed", created_at=at(-30), next_attempt_at=at(-25),
         updated_at=at(-20))
    seed(engine, "F-2", status="failed", created_at=at(-10), next_attempt_at=at(-5),
         updated_at=at(-1))

    rows = view_rows(engine, "SELECT status, row_count, oldest_created_at, "
                     "oldest_next_attempt_at, newest_updated_at FROM outbox_status_summary",
                     "oldest_created_at", "oldest_next_attempt_at", "newest_updated_at")

    by_status = {r["status"]: r for r in rows}
    assert len(rows) == 4
    assert {s: int(r["row_count"]) for s, r in by_status.items()} == {
        "pending": 2, "in_flight": 0, "delivered": 1, "failed": 2}
    assert (by_status["pending"]["oldest_created_at"], by_status["pending"]
            ["oldest_next_attempt_at"], by_status["pending"]["newest_updated_at"]) == (
        at(0), at(20), at(40))
    assert (by_status["failed"]["oldest_created_at"], by_status["failed"]
            ["oldest_next_attempt_at"], by_status["failed"]["newest_updated_at"]) == (
        at(-30), at(-25), at(-1))
    assert by_status["delivered"]["oldest_created_at"] == at(-60)
    assert by_status["in_flight"]["oldest_created_at"] is None
    assert by_status["in_flight"]["newest_updated_at"] is None


def test_failures_lists_only_failed_rows_with_their_latest_attempt_even_after_a_retry(
    engine: Engine,
) -> None:
    failed = seed(engine, "F-1", status="failed", attempts=1, last_http_status=400,
                  last_error="products[0].price: rejected", created_at=at(0), updated_at=at(9))
    seed(engine, "F-2", status="failed", attempts=0, last_error="payload is not JSON",
         created_at=at(1), updated_at=at(2))
    pending = seed(engine, "P-1")
    # The third attempt of the first round, then the first after an operator retry: the
    # latest is the one recorded last, whatever its attempt number.
    attempt(engine, failed, 3, at(5))
    attempt(engine, failed, 1, at(8), http_status=400, outcome="rejected",
            error_class="Rejected", response_excerpt='{"error":"bad price"}')
    attempt(engine, pending, 1, at(9), outcome="delivered", http_status=200)

    rows = view_rows(engine, "SELECT * FROM outbox_failures ORDER BY orderid",
                     "created_at", "updated_at", "last_attempt_at")

    assert [r["orderid"] for r in rows] == ["F-1", "F-2"]
    first, second = rows
    assert (first["id"], first["event"], first["attempts"], first["last_http_status"],
            first["last_error"], first["created_at"], first["updated_at"]) == (
        failed, "Purchase", 1, 400, "products[0].price: rejected", at(0), at(9))
    assert (first["last_attempt_at"], first["last_attempt_outcome"],
            first["last_attempt_http_status"], first["last_attempt_excerpt"]) == (
        at(8), "rejected", 400, '{"error":"bad price"}')
    assert (second["last_error"], second["last_attempt_at"], second["last_attempt_outcome"],
            second["last_attempt_excerpt"]) == ("payload is not JSON", None, None, None)


def test_the_views_are_empty_but_present_on_an_empty_outbox(engine: Engine) -> None:
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_view_names()) >= VIEWS
        summary = conn.execute(sa.text("SELECT status, row_count FROM outbox_status_summary"))
        assert {s: int(c) for s, c in summary} == {
            "pending": 0, "in_flight": 0, "delivered": 0, "failed": 0}
        assert conn.execute(sa.text("SELECT count(*) FROM outbox_failures")).scalar() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_downgrading_past_0003_drops_the_views_and_upgrading_brings_them_back(
    backend: str, tmp_root: Path
) -> None:
    url = backend_url(backend, tmp_root, database=f"{TEST_DB}_views")
    migrations.upgrade(url)
    engine = make_engine(url)
    try:
        migrations.downgrade(url, "0002")
        with engine.connect() as conn:
            assert not VIEWS & set(sa.inspect(conn).get_view_names())
        migrations.upgrade(url)
        with engine.connect() as conn:
            assert set(sa.inspect(conn).get_view_names()) >= VIEWS
    finally:
        engine.dispose()
