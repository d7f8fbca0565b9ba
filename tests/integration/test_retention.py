"""Retention and the workers' timers on each database, without Celery: what they change."""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase
from spotler_outbox.models import claims, control, retention
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import attempts_table, events
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi
from spotler_outbox.worker.sweeper import Timers
from tests.conftest import purchase
from tests.integration.fixtures import delivery_settings, row, seed_row

DAY = dt.timedelta(days=1)


def delivered(at: dt.datetime) -> dict[str, Any]:
    return {"status": "delivered", "attempts": 1, "delivered_at": at, "last_http_status": 200}


def all_rows(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.orderid: r for r in conn.execute(sa.select(events))}


def test_retention_cutoff_is_the_retention_days_before_now_and_none_when_off() -> None:
    now = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    assert retention.retention_cutoff(now, 30) == dt.datetime(2026, 10, 28, 12, tzinfo=dt.UTC)
    assert retention.retention_cutoff(now, 1) == now - DAY
    assert retention.retention_cutoff(now, 0) is None


def test_retention_empties_old_payloads_keeps_orderids_and_a_re_enqueue_creates_nothing(
    engine: Engine, settings: Settings,
) -> None:
    now = utc_now()
    for i in range(7):  # more than one batch of 3, some sharing a delivery time
        seed_row(engine, f"OLD-{i}", **delivered(now - 40 * DAY + (i // 2) * dt.timedelta(
            seconds=1)))
    seed_row(engine, "RECENT", **delivered(now - 29 * DAY))
    seed_row(engine, "PENDING-OLD", created_at=now - 40 * DAY)
    count = retention.purge_delivered_before(engine, before=now - 30 * DAY, clock=utc_now,
                                             batch=3)
    assert count.rows == 7
    rows = all_rows(engine)
    assert set(rows) == {*(f"OLD-{i}" for i in range(7)), "RECENT", "PENDING-OLD"}
    for i in range(7):
        old = rows[f"OLD-{i}"]
        assert (old.payload, old.status, old.last_error) == ("", "delivered", None)
        assert old.purged_at is not None and old.delivered_at is not None
    assert "jane.doe@example.com" in rows["RECENT"].payload and rows["RECENT"].purged_at is None
    assert rows["PENDING-OLD"].payload and rows["PENDING-OLD"].status == "pending"

    with Session(engine) as session, session.begin():
        again = enqueue_purchase(session, purchase("OLD-3"), settings=settings)
    assert again.created is False
    with engine.begin() as conn:  # an order system in another language, by plain SQL
        insert = ("INSERT INTO outbox_events (event, orderid, payload) VALUES "
                  "('Purchase', 'OLD-4', :p) ON DUPLICATE KEY UPDATE id = id"
                  if engine.dialect.name == "mysql" else
                  "INSERT INTO outbox_events (event, orderid, payload) VALUES "
                  "('Purchase', 'OLD-4', :p) ON CONFLICT (account, event, orderid) DO NOTHING")
        conn.execute(sa.text(insert), {"p": json.dumps(purchase("OLD-4"))})
    after = all_rows(engine)
    assert len(after) == 9 and after["OLD-4"].payload == "" and after["OLD-3"].payload == ""
    assert retention.purge_delivered_before(engine, before=now - 30 * DAY,
                                            clock=utc_now).rows == 0


def test_retention_deletes_attempts_only_once_no_kept_order_refers_to_them(
    engine: Engine,
) -> None:
    now = utc_now()
    old_id = seed_row(engine, "OLD", **delivered(now - 40 * DAY))
    new_id = seed_row(engine, "NEW", **delivered(now))
    record = claims.AttemptRecord(now - 40 * DAY, 5, 1, 200, "delivered", None,
                                  "ok jane.doe@example.com", None)
    with engine.begin() as conn:
        lone = claims.record_attempt(conn, record, [claims.ClaimedRow(old_id, "OLD", "", 1, now)])
        shared = claims.record_attempt(conn, record, [
            claims.ClaimedRow(old_id, "OLD", "", 2, now),
            claims.ClaimedRow(new_id, "NEW", "", 1, now)])
    count = retention.purge_delivered_before(engine, before=now - 30 * DAY, clock=utc_now,
                                             batch=1)
    with engine.connect() as conn:
        left = set(conn.execute(sa.select(attempts_table.c.id)).scalars())
    assert (count.rows, count.attempts) == (1, 1) and left == {shared} and lone not in left


def test_a_purged_order_cannot_be_resent_or_retried(engine: Engine) -> None:
    from spotler_outbox.models import operations as ops
    from spotler_outbox.models.errors import OutboxError

    now = utc_now()
    seed_row(engine, "GONE", **delivered(now - 40 * DAY))
    ops.purge(engine, delivered_before=now - 30 * DAY)
    with engine.begin() as conn, pytest.raises(OutboxError, match="was purged"):
        ops.resend_delivered(conn, "GONE", now=now, note="again")
    assert row(engine, "GONE").status == "delivered"


def test_retention_batches_are_picked_by_keyset_on_the_delivery_time(engine: Engine) -> None:
    now = utc_now()
    for i, days in enumerate((50, 45, 40, 35)):
        seed_row(engine, f"K-{i}", **delivered(now - days * DAY))
    with engine.connect() as conn:
        first = retention.pick_unpurged(conn, before=now - 30 * DAY, since=None, limit=2)
        rest = retention.pick_unpurged(conn, before=now - 30 * DAY, since=first[-1][1],
                                       limit=10)
    by_id = {r.id: o for o, r in all_rows(engine).items()}
    assert [by_id[i] for i, _ in first] == ["K-0", "K-1"]
    # `since` is inclusive (rows delivered together share a time); K-1 is not purged yet here.
    assert [by_id[i] for i, _ in rest] == ["K-1", "K-2", "K-3"]


def test_postgresql_vacuums_the_outbox_after_a_fixed_number_of_changed_rows(
    postgres_url: str,
) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        options = conn.execute(sa.text(
            "SELECT reloptions FROM pg_class WHERE relname = 'outbox_events'")).scalar_one()
    engine.dispose()
    assert "autovacuum_vacuum_scale_factor=0" in options
    assert "autovacuum_vacuum_threshold=5000" in options


def test_one_worker_takes_a_timer_turn_until_it_is_due_again(engine: Engine) -> None:
    now = utc_now()
    later = now + dt.timedelta(seconds=2)
    with engine.begin() as conn:
        assert control.take_turn(conn, "sweep", now=now, next_at=later)
    with engine.begin() as conn:
        assert not control.take_turn(conn, "sweep", now=now, next_at=later)
        assert control.take_turn(conn, "retention", now=now, next_at=later)
    with engine.begin() as conn:
        assert control.take_turn(conn, "sweep", now=later, next_at=later + DAY)


def test_the_sweep_wakes_dispatch_only_for_rows_due_a_whole_interval_once_per_turn(
    engine: Engine, database_url: str,
) -> None:
    sent: list[int] = []
    settings = Settings(database_url=database_url, sweep_interval=30.0, sweep_fanout=2,
                        api_url="http://127.0.0.1:9", account="a", api_key="k")
    timers = [Timers(settings, lambda: sent.append(1)) for _ in range(2)]
    try:
        assert timers[0].sweep() == 0  # nothing in the outbox
        seed_row(engine, "JUST-DUE")
        assert timers[0].sweep() == 0 and not sent  # a running dispatch takes it
        with engine.begin() as conn:
            conn.execute(events.update().values(next_attempt_at=utc_now() - dt.timedelta(
                seconds=31)))
        assert [t.sweep() for t in timers] == [2, 0]  # one worker's turn, not both
        assert len(sent) == 2
    finally:
        for t in timers:
            t.shutdown()


def test_retention_off_with_zero_days_purges_nothing(engine: Engine, database_url: str) -> None:
    seed_row(engine, "KEEP", **delivered(utc_now() - 400 * DAY))
    settings = Settings(database_url=database_url, retention_days=0)
    timers = Timers(settings, lambda: None)
    try:
        assert timers.retention() == 0
    finally:
        timers.shutdown()
    assert row(engine, "KEEP").payload
    timers = Timers(settings.with_overrides(retention_days=30), lambda: None)
    try:
        assert [timers.retention(), timers.retention()] == [1, 0]  # the second: not its turn
    finally:
        timers.shutdown()
    assert row(engine, "KEEP").payload == ""


def test_show_says_a_purged_order_was_emptied_and_why_its_orderid_stays(
    engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from spotler_outbox.models import operations as ops
    from spotler_outbox.models.settings import reset_settings
    from spotler_outbox.worker.console.cli import main

    seed_row(engine, "GONE", **delivered(utc_now() - 40 * DAY))
    ops.purge(engine, delivered_before=utc_now() - 30 * DAY)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", database_url)
    reset_settings()
    assert main(["show", "GONE"]) == 0
    out = capsys.readouterr().out
    assert "emptied" in out and "enqueueing it again sends nothing" in out


def test_while_paused_one_worker_per_turn_asks_verify_auth_and_none_wakes_dispatch(
    engine: Engine, database_url: str, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str | None] = []
    answer = api.state.verify_auth

    def slow_answer(account: str | None, key: str | None) -> Any:
        asked.append(account)
        time.sleep(0.5)  # every worker has read the pause by now: only the turn stops them
        return answer(account, key)

    monkeypatch.setattr(api.state, "verify_auth", slow_answer)
    api.state.set_faults(Faults(auth_failure=True))
    seed_row(engine, "WAITING", next_attempt_at=utc_now() - DAY)
    with engine.begin() as conn:
        control.pause(conn, reason="HTTP 401", now=utc_now(), check_at=utc_now() - DAY)
    settings = delivery_settings(database_url, api.url, sweep_interval=30.0)
    sent: list[int] = []
    timers = [Timers(settings, lambda: sent.append(1)) for _ in range(3)]
    try:
        with ThreadPoolExecutor(len(timers)) as pool:  # three workers' timers at once
            assert list(pool.map(lambda t: t.sweep(), timers)) == [0, 0, 0]
        assert len(asked) == 1 and not sent  # still refused: paused, nothing woken
    finally:
        for t in timers:
            t.shutdown()


def test_the_worker_user_of_grants_can_run_retention_and_the_sweep(
    server_database_url: str,
) -> None:
    from spotler_outbox.models.database import make_engine
    from tests.integration.roles import role_urls

    engine = make_engine(server_database_url)  # the tables' owner, to seed and to look
    now = utc_now()
    old_id = seed_row(engine, "OLD", **delivered(now - 40 * DAY))
    seed_row(engine, "DUE", next_attempt_at=now - DAY)
    with engine.begin() as conn:
        claims.record_attempt(conn, claims.AttemptRecord(
            now - 40 * DAY, 5, 1, 200, "delivered", None, None, None),
            [claims.ClaimedRow(old_id, "OLD", "", 1, now)])
    settings = Settings(database_url=role_urls(server_database_url)["worker"],
                        retention_days=30, api_url="http://127.0.0.1:9", account="a",
                        api_key="k")
    sent: list[int] = []
    timers = Timers(settings, lambda: sent.append(1))
    try:
        assert timers.retention() == 1 and timers.sweep() == settings.sweep_fanout
    finally:
        timers.shutdown()
    assert row(engine, "OLD").payload == ""
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(attempts_table)).scalar() == 0
    engine.dispose()
