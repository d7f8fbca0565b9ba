"""A real Django project (tests/django_shop) enqueues in its own transaction.atomic(), on
Django's own connection, on PostgreSQL and MariaDB; a real worker delivers what committed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from spotler_outbox import InvalidEvent
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.errors import UsageError
from spotler_outbox.models.settings import reset_settings
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from tests.conftest import empty_database, purchase
from tests.integration.fixtures import statuses
from tests.integration.workers import REDIS_URL, running_worker, wait_for, worker_environment

pytest.importorskip("django")

ALIASES = {"postgresql": "default", "mariadb": "mariadb"}


@pytest.fixture(params=list(ALIASES))
def shop(request: pytest.FixtureRequest, django_project: None, tmp_root: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """(Django database alias, its URL): the outbox migrated there, the shop's orders table
    created by Django itself, both empty."""
    from django.db import connections

    from tests.django_shop.models import Order

    url = empty_database(request.param, tmp_root)
    alias = ALIASES[request.param]
    connection = connections[alias]
    if connection.vendor == "mysql":
        # Django's own INSERTs use RETURNING on MariaDB but not on MySQL 8: as on MySQL 8, so
        # the MySQL 8 guard checks what the outbox sends next to a MySQL 8 shop's statements.
        connection.features.can_return_columns_from_insert = False
    with connection.schema_editor() as editor:
        if Order._meta.db_table in connection.introspection.table_names():
            editor.delete_model(Order)
        editor.create_model(Order)
    monkeypatch.setenv("OUTBOX_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("OUTBOX_WAKEUP", "true")
    reset_settings()
    yield alias, url
    connection.close()


def post_checkout(alias: str, **body: Any) -> Any:
    from django.test import Client

    return Client().post(f"/checkout?db={alias}", body, content_type="application/json")


def orders(alias: str) -> int:
    from tests.django_shop.models import Order

    return int(Order.objects.using(alias).count())


def test_a_committed_django_order_is_delivered_once_by_a_woken_worker(
    shop: tuple[str, str], api: RunningFakeApi, broker: object, tmp_path: Path,
) -> None:
    alias, url = shop
    engine = make_engine(url)
    # The sweeper an hour away: only transaction.on_commit's wake-up (or, on PostgreSQL,
    # LISTEN) starts the delivery.
    env = worker_environment(url, api.url, OUTBOX_SWEEP_INTERVAL_SECONDS="3600")
    with running_worker("django", env, tmp_path):
        response = post_checkout(alias, email="jane@example.com", sku="SKU-9", quantity=2)
        assert response.status_code == 201
        orderid = f"DJ-{response.json()['order']}"
        wait_for(lambda: statuses(engine).get(orderid) == "delivered", 20, "the delivery")
    assert api.state.received()["orderids"] == {orderid: 1}
    assert api.state.events_for(orderid)[0]["products"] == [{"id": "SKU-9", "quantity": 2}]
    engine.dispose()


def test_a_rolled_back_django_order_leaves_no_outbox_row(shop: tuple[str, str]) -> None:
    alias, url = shop
    response = post_checkout(alias, email="jane@example.com", sku="SKU-9", quantity=2,
                             decline=True)
    assert response.status_code == 402
    engine = make_engine(url)
    assert statuses(engine) == {}
    assert orders(alias) == 0
    engine.dispose()


def test_a_bad_event_is_refused_with_its_field_before_the_order_commits(
    shop: tuple[str, str],
) -> None:
    alias, url = shop
    response = post_checkout(alias, email="jane@example.com", sku="SKU-9", quantity=0)
    assert response.status_code == 400
    assert any(p.startswith("products[0].quantity") for p in response.json()["problems"])
    assert orders(alias) == 0
    engine = make_engine(url)
    assert statuses(engine) == {}
    engine.dispose()


def test_outside_transaction_atomic_the_django_enqueue_refuses_and_writes_nothing(
    shop: tuple[str, str],
) -> None:
    from spotler_outbox.django import enqueue_purchase

    alias, url = shop
    with pytest.raises(UsageError, match=r"inside transaction\.atomic"):
        enqueue_purchase(purchase("DJ-outside"), using=alias)
    engine = make_engine(url)
    assert statuses(engine) == {}
    engine.dispose()


def test_a_second_django_enqueue_of_one_orderid_is_a_no_op_in_the_same_transaction(
    shop: tuple[str, str],
) -> None:
    from django.db import transaction

    from spotler_outbox.django import enqueue_purchase

    alias, url = shop
    with transaction.atomic(using=alias):
        first = enqueue_purchase(purchase("DJ-dup"), using=alias)
        second = enqueue_purchase(purchase("DJ-dup", email="other@example.com"), using=alias)
    assert first.created and second.duplicate and second.id == first.id
    engine = make_engine(url)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM outbox_events")).scalar()
    assert count == 1
    engine.dispose()


def test_an_invalid_event_raises_invalid_event_in_django_too(shop: tuple[str, str]) -> None:
    from django.db import transaction

    from spotler_outbox.django import enqueue_purchase

    alias, _ = shop
    with pytest.raises(InvalidEvent, match="orderid"), transaction.atomic(using=alias):
        enqueue_purchase(purchase(orderid=""), using=alias)
