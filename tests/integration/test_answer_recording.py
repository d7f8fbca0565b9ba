"""Between "request sent" and "answer recorded": whatever fails there, an order Spotler has
answered is never sent again at once, nor reported as not sent.

The oracle is the fake API's own count of what it received; the rows and attempt rows are
read from the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.models import claims
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.tables import Status
from spotler_outbox.worker.dispatch import Dispatcher
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from spotler_outbox.worker.spotler.client import Accepted, SpotlerClient
from tests.integration.fixtures import delivery_settings, row, seed, statuses
from tests.integration.test_dispatch import drain, fast_clock, make_dispatcher

ORDERS = [f"RA-{i}" for i in range(5)]


def attempt_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM delivery_attempts")).scalar_one())


@pytest.fixture
def admin(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url, isolation_level="AUTOCOMMIT")
    yield engine
    set_read_only(engine, on=False)
    engine.dispose()


def set_read_only(admin: Engine, *, on: bool) -> None:
    """What a failover does to the clients of a demoted primary: their sessions end, and the
    node they reconnect to refuses writes (SQLSTATE 25006) until a primary is back."""
    with admin.connect() as conn:
        name = conn.exec_driver_sql("SELECT current_database()").scalar_one()
        setting = "SET default_transaction_read_only = on" if on else \
            "RESET default_transaction_read_only"
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" {setting}')
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")


def test_an_answer_is_recorded_once_a_database_that_turned_read_only_takes_writes_again(
    postgres_url: str, admin: Engine, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = make_dispatcher(postgres_url, api, batch_size=5)
    engine = dispatcher.engine
    seed(engine, ORDERS, dispatcher.settings)
    track = dispatcher.client.track_json  # type: ignore[union-attr]
    back = threading.Timer(3.0, set_read_only, (admin,), {"on": False})

    def answered_then_a_failover(events: Any) -> Accepted:
        accepted = track(events)
        set_read_only(admin, on=True)
        back.start()
        return accepted

    monkeypatch.setattr(dispatcher.client, "track_json", answered_then_a_failover)
    with caplog.at_level(logging.WARNING, logger="spotler_outbox.dispatch"):
        report = dispatcher.run(budget_seconds=0)
    back.join()
    assert (report.delivered, report.released, report.lost_claims) == (5, 0, 0)
    assert api.state.received()["orderids"] == dict.fromkeys(ORDERS, 1)
    assert {(row(engine, o).status, row(engine, o).attempts) for o in ORDERS} == {
        (Status.DELIVERED, 1)}
    assert attempt_rows(engine) == 1
    retrying = [r.getMessage() for r in caplog.records
                if "could not record Spotler's answer" in r.getMessage()]
    assert len(retrying) == 1 and "read-only" in retrying[0]
    assert sum("recorded Spotler's answer for 5 rows after" in r.getMessage()
               for r in caplog.records) == 1


def test_a_lost_prepared_statement_while_recording_an_answer_is_retried_not_resent(
    database_url: str, engine: Engine, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What psycopg behind PgBouncer in transaction mode raised (ProgrammingError), and what
    # the record used to hand back as "not sent", at once.
    dispatcher = make_dispatcher(database_url, api, batch_size=5)
    seed(engine, ORDERS, dispatcher.settings)
    mark = claims.mark_delivered
    failures = [sa.exc.ProgrammingError(
        "UPDATE outbox_events ...", {}, Exception('prepared statement "_pg3_3" does not exist'))]

    def fails_once(*args: Any, **kwargs: Any) -> int:
        if failures:
            raise failures.pop()
        return mark(*args, **kwargs)

    monkeypatch.setattr(claims, "mark_delivered", fails_once)
    report = dispatcher.run(budget_seconds=0)
    assert (report.delivered, report.released) == (5, 0)
    assert api.state.received()["orderids"] == dict.fromkeys(ORDERS, 1)
    assert {(row(engine, o).status, row(engine, o).attempts) for o in ORDERS} == {
        (Status.DELIVERED, 1)}
    assert attempt_rows(engine) == 1  # the failed try's attempt row rolled back with it


def test_a_bug_while_recording_an_answer_keeps_the_rows_claimed_with_the_doubt_noted(
    database_url: str, engine: Engine, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = delivery_settings(database_url, api.url, batch_size=5, lease_seconds=7.0,
                                 connect_timeout=0.5, read_timeout=1.5)
    dispatcher = Dispatcher(make_engine(database_url), SpotlerClient(settings), settings,
                            clock=fast_clock(4.0))
    seed(engine, ORDERS, settings)

    def a_bug(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("a bug in the record")

    monkeypatch.setattr(claims, "record_attempt", a_bug)
    with pytest.raises(RuntimeError):
        dispatcher.run(budget_seconds=0)
    for orderid in ORDERS:
        kept = row(engine, orderid)
        assert (kept.status, kept.attempts) == (Status.IN_FLIGHT, 1)
        assert "its answer could not be recorded (RuntimeError)" in kept.last_error
    # Not due again before the lease ends: not sent twice at once.
    assert dispatcher.run(budget_seconds=0).claimed == 0
    assert api.state.received()["orderids"] == dict.fromkeys(ORDERS, 1)
    monkeypatch.undo()
    time.sleep(2.0)  # the 7 s lease on the 4x clock
    reclaimed = dispatcher.claim_next()
    assert reclaimed is not None
    assert all("may have reached Spotler" in (row(engine, o).last_error or "") for o in ORDERS)
    reclaimed.send_all()
    drain(dispatcher)
    assert set(statuses(engine).values()) == {Status.DELIVERED}
