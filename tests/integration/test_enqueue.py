"""enqueue_purchase adds one validated row inside the caller's transaction, on every backend."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox import InvalidEvent, enqueue_purchase
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import OutboxEvent, Status
from tests.conftest import purchase, wipe
from tests.unit.strategies import valid_purchases


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(OutboxEvent)).scalar_one())


def test_a_committed_enqueue_stores_the_exact_json_that_will_be_sent(
    engine: Engine, settings: Settings
) -> None:
    with Session(engine) as session, session.begin():
        result = enqueue_purchase(session, purchase("A-1"), settings=settings)
        assert result.created
    with Session(engine) as session:
        row = session.execute(sa.select(OutboxEvent)).scalar_one()
        assert row.status == Status.PENDING
        assert row.attempts == 0
        assert row.orderid == "A-1"
        assert json.loads(row.payload) == purchase("A-1")
        assert row.next_attempt_at.tzinfo is not None


def test_an_enqueue_in_a_transaction_that_rolls_back_leaves_no_row(
    engine: Engine, settings: Settings
) -> None:
    with Session(engine) as session:
        session.begin()
        enqueue_purchase(session, purchase("A-2"), settings=settings)
        session.rollback()
    assert count_rows(engine) == 0


def test_a_second_enqueue_of_one_orderid_returns_the_existing_row_without_raising(
    engine: Engine, settings: Settings
) -> None:
    with Session(engine) as session, session.begin():
        first_id = enqueue_purchase(session, purchase("A-3"), settings=settings).id
    with Session(engine) as session, session.begin():
        second = enqueue_purchase(session, purchase("A-3", email="other@example.com"),
                                  settings=settings)
        assert second.duplicate
        assert second.id == first_id
        # The caller's transaction is still usable after the duplicate.
        session.execute(sa.select(1))
    assert count_rows(engine) == 1


def test_the_duplicate_in_the_same_transaction_is_also_reported_not_added(
    engine: Engine, settings: Settings
) -> None:
    with Session(engine) as session, session.begin():
        assert enqueue_purchase(session, purchase("A-4"), settings=settings).created
        assert enqueue_purchase(session, purchase("A-4"), settings=settings).duplicate
    assert count_rows(engine) == 1


def test_two_concurrent_transactions_enqueueing_one_orderid_give_one_row_and_no_error(
    engine: Engine, settings: Settings
) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has a single writer: a second transaction cannot run concurrently")
    first_inserted = threading.Event()
    results: dict[str, Any] = {}

    def second_transaction() -> None:
        first_inserted.wait(10)
        try:
            with Session(engine) as session, session.begin():
                second = enqueue_purchase(session, purchase("A-5"), settings=settings)
                results["second"] = (second.created, second.id)
        except Exception as e:
            results["error"] = e

    thread = threading.Thread(target=second_transaction)
    thread.start()
    with Session(engine) as session, session.begin():
        first = enqueue_purchase(session, purchase("A-5"), settings=settings)
        results["first"] = (first.created, first.id)
        first_inserted.set()
        thread.join(0.5)  # the second blocks on the unique key until this commits
        assert thread.is_alive()
    thread.join(10)
    assert "error" not in results
    assert results["first"][0] is True
    assert results["second"] == (False, results["first"][1])
    assert count_rows(engine) == 1


def test_an_invalid_event_is_refused_before_the_database_is_touched(
    engine: Engine, settings: Settings
) -> None:
    bad = purchase("A-6", products=[{"id": "SKU", "quantity": 0}], orderId="x")
    with Session(engine) as session, session.begin(), pytest.raises(InvalidEvent) as refused:
        enqueue_purchase(session, bad, settings=settings)
    problems = refused.value.problems
    assert "products[0].quantity: must be a positive integer, got number 0" in problems
    assert any(p.startswith("orderId: unknown field (did you mean 'orderid'?)")
               for p in refused.value.problems)
    assert count_rows(engine) == 0


def test_with_email_hashing_on_the_stored_payload_carries_the_sha256_not_the_address(
    engine: Engine, settings: Settings
) -> None:
    hashing = settings.with_overrides(hash_email=True)
    with Session(engine) as session, session.begin():
        enqueue_purchase(session, purchase("A-7", email="  Jane.Doe@Example.com "),
                         settings=hashing)
    with engine.connect() as conn:
        payload = conn.execute(sa.select(OutboxEvent.payload)).scalar_one()
    assert "example" not in payload.lower()
    assert json.loads(payload)["email"] == hashlib.sha256(b"jane.doe@example.com").hexdigest()


@hsettings(max_examples=25, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(event=valid_purchases())
def test_every_valid_event_is_stored_and_reads_back_as_exactly_the_json_sent(
    engine: Engine, settings: Settings, event: dict[str, Any]
) -> None:
    wipe(engine)  # every example a new order: a duplicate of an earlier one would assert nothing
    with Session(engine) as session, session.begin():
        result = enqueue_purchase(session, event, settings=settings)
        assert result.created
        row_id = result.id
    with engine.connect() as conn:
        payload = conn.execute(
            sa.select(OutboxEvent.payload).where(OutboxEvent.id == row_id)).scalar_one()
    # Written out by hand, not by the validator: ids travel as strings, the rest as sent.
    expected = {**event, "orderid": str(event["orderid"]),
                "products": [{**p, "id": str(p["id"])} for p in event["products"]]}
    assert json.loads(payload) == expected


def test_orderids_that_differ_only_in_case_or_accents_are_two_orders(
    engine: Engine, settings: Settings
) -> None:
    with Session(engine) as session, session.begin():
        for orderid in ("AB-1", "ab-1", "café-1", "cafe-1"):
            assert enqueue_purchase(session, purchase(orderid), settings=settings).created
    assert count_rows(engine) == 4


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_concurrent_duplicate_under_snapshot_isolation_leaves_the_callers_transaction_usable(
    server_database_url: str, isolation: str
) -> None:
    settings = Settings(database_url=server_database_url, wakeup_enabled=False)
    # Two real transactions at once: the first holds the new row uncommitted, the second
    # (the order system's, at the given level) enqueues the same orderid, blocks on the
    # unique key, and must come out with the duplicate and a transaction it can still commit.
    first_engine = sa.create_engine(server_database_url)
    caller = sa.create_engine(server_database_url, isolation_level=isolation)
    first_inserted, second_waiting = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def order_transaction() -> None:
        try:
            with Session(caller) as session, session.begin():
                # The snapshot starts here, on a table of the shop's own (MariaDB's
                # SERIALIZABLE would lock a range of outbox_events for a read of it).
                session.execute(sa.text("SELECT * FROM dispatch_control")).all()
                first_inserted.wait(10)
                second_waiting.set()
                result = enqueue_purchase(session, purchase("SI-1"), settings=settings)
                results["duplicate"] = (result.created, result.id)
                # The caller goes on: its own order and another event commit with it.
                results["other"] = enqueue_purchase(session, purchase("SI-2"),
                                                    settings=settings).created
        except Exception as e:
            results["error"] = e

    thread = threading.Thread(target=order_transaction)
    thread.start()
    try:
        with Session(first_engine) as session, session.begin():
            first = enqueue_purchase(session, purchase("SI-1"), settings=settings)
            first_inserted.set()
            second_waiting.wait(10)
            thread.join(0.5)
            assert thread.is_alive()  # blocked on the unique key until this commits
        thread.join(20)
    finally:
        first_engine.dispose()
        caller.dispose()
    assert "error" not in results, repr(results.get("error"))
    assert results["duplicate"] == (False, first.id)
    assert results["other"] is True
    assert count_rows_url(server_database_url) == 2


def count_rows_url(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        return count_rows(engine)
    finally:
        engine.dispose()


_shop_orders = sa.Table(
    "value_orders", sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("price", sa.Numeric(12, 2), nullable=False),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("birthdate", sa.Date, nullable=False))


def test_values_as_the_shops_orm_reads_them_back_are_stored_exactly(
    server_database_url: str,
) -> None:
    """Numeric, DateTime(timezone=True), Date and an integer key, read back from the shop's
    own table: Decimal, an aware datetime on PostgreSQL (MariaDB's DATETIME comes back naive,
    and is refused asking for the timezone), date and int."""
    settings = Settings(wakeup_enabled=False)
    engine = make_engine(server_database_url)
    _shop_orders.drop(engine, checkfirst=True)
    _shop_orders.create(engine)
    placed = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(_shop_orders.insert().values(price=Decimal("19.90"), placed_at=placed,
                                                  birthdate=dt.date(1990, 5, 17)))
    with Session(engine) as session, session.begin():
        order = session.execute(sa.select(_shop_orders)).one()
        event = purchase(order.id, totalvalue=order.price, birthdate=order.birthdate,
                         products=[{"id": "SKU-1", "quantity": 2, "price": order.price}])
        if engine.dialect.name == "postgresql":
            enqueue_purchase(session, {**event, "timestamp": order.placed_at},
                             settings=settings)
        else:
            with pytest.raises(InvalidEvent, match="timestamp: a datetime without a timezone"):
                enqueue_purchase(session, {**event, "timestamp": order.placed_at},
                                 settings=settings)
            enqueue_purchase(session, {**event, "timestamp": order.placed_at.replace(
                tzinfo=dt.UTC)}, settings=settings)
    with engine.connect() as conn:
        orderid, payload = conn.execute(sa.text("SELECT orderid, payload FROM outbox_events")).one()
    _shop_orders.drop(engine)
    engine.dispose()
    assert orderid == str(order.id)
    assert '"price":19.90}' in payload and '"totalvalue":19.90' in payload
    assert '"birthdate":"1990-05-17"' in payload
    assert '"timestamp":"2026-11-27T09:00:00+00:00"' in payload
