"""The shipped PHP example (a Magento 2 order observer on PDO), run with Debian's php-cli
against PostgreSQL and MariaDB, then delivered by a real Celery worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from spotler_outbox.models.database import make_engine
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from tests.conftest import in_ci
from tests.integration.fixtures import row, statuses
from tests.integration.workers import running_worker, wait_for, worker_environment

ROOT = Path(__file__).resolve().parents[2]
PLACE_ORDER = ROOT / "tests" / "php" / "place_order.php"
ENQUEUE_SCRIPT = ROOT / "examples" / "php" / "enqueue.php"
PDO_DRIVER = {"postgresql": "pdo_pgsql", "mysql": "pdo_mysql"}


def php_or_skip(driver: str) -> str:
    php = shutil.which("php")
    modules = subprocess.run([php, "-m"], capture_output=True, text=True).stdout if php else ""
    if php is None or driver not in modules.split():
        message = f"php-cli with {driver} not installed (.ci/run installs it)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return php


def pdo_dsn(database_url: str) -> tuple[str, str, str]:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        dsn = f"pgsql:host={url.host};port={url.port or 5432};dbname={url.database}"
    else:
        dsn = f"mysql:host={url.host};port={url.port or 3306};dbname={url.database};charset=utf8mb4"
    return dsn, url.username or "", url.password or ""


def magento_order(increment_id: str, **overrides: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "increment_id": increment_id, "state": "processing",
        "customer_email": "jane.doe@example.com", "order_currency_code": "EUR",
        "grand_total": "19.9000",  # Magento keeps decimals as strings
        "items": [{"sku": "SKU-1", "qty_ordered": "2.0000", "price": "9.9500"}],
    }
    order.update(overrides)
    return order


def place_order(database_url: str, order: dict[str, Any], outcome: str = "commit") -> bool:
    backend = make_url(database_url).get_backend_name()
    php = php_or_skip(PDO_DRIVER[backend])
    result = subprocess.run([php, str(PLACE_ORDER), *pdo_dsn(database_url), json.dumps(order),
                             outcome], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return bool(json.loads(result.stdout)["created"])


@pytest.fixture
def shop(server_database_url: str) -> str:
    """The shop's own order table, beside the outbox, emptied."""
    engine = make_engine(server_database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS shop_sales_order "
                             "(increment_id VARCHAR(50) PRIMARY KEY, state VARCHAR(32))"))
        conn.execute(sa.text("DELETE FROM shop_sales_order"))
    engine.dispose()
    return server_database_url


def shop_orders(database_url: str) -> set[str]:
    engine = make_engine(database_url)
    with engine.connect() as conn:
        found = set(conn.execute(sa.text("SELECT increment_id FROM shop_sales_order")).scalars())
    engine.dispose()
    return found


def test_a_php_order_commits_its_outbox_row_with_it_and_a_worker_delivers_it_once(
    shop: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    assert place_order(shop, magento_order("100000001")) is True
    # Saved again on its way (shipped): the outbox already holds it, nothing changes.
    assert place_order(shop, magento_order("100000001", state="complete")) is False
    # Rolled back: neither the order nor its outbox row exists.
    place_order(shop, magento_order("100000002"), outcome="rollback")
    # Not paid yet: not a purchase.
    place_order(shop, magento_order("100000003", state="new"))
    assert shop_orders(shop) == {"100000001", "100000003"}
    engine = make_engine(shop)
    assert statuses(engine) == {"100000001": "pending"}
    env = worker_environment(shop, api.url, as_role="worker")
    with running_worker("php", env, tmp_path):
        wait_for(lambda: statuses(engine) == {"100000001": "delivered"}, 30, "delivery")
    engine.dispose()
    assert api.state.received()["orderids"] == {"100000001": 1}
    [sent] = api.state.events_for("100000001")
    assert sent == {"email": "jane.doe@example.com", "orderid": "100000001",
                    "products": [{"id": "SKU-1", "quantity": 2, "price": 9.95}],
                    "currency": "EUR", "totalvalue": 19.9, "event": "Purchase"}


def test_a_bad_event_inserted_by_php_is_parked_with_its_reason_and_the_good_one_delivered(
    shop: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    bad_item = {"sku": "SKU-2", "qty_ordered": "0.0000", "price": "5.0000"}
    assert place_order(shop, magento_order("100000010", items=[bad_item])) is True
    assert place_order(shop, magento_order("100000011")) is True
    engine = make_engine(shop)
    env = worker_environment(shop, api.url, as_role="worker")
    with running_worker("php", env, tmp_path):
        wait_for(lambda: set(statuses(engine).values()) <= {"delivered", "failed"}, 30,
                 "both rows settled")
    parked = row(engine, "100000010")
    engine.dispose()
    assert parked.status == "failed"
    assert "products[0].quantity" in parked.last_error
    assert api.state.received()["orderids"] == {"100000011": 1}


def run_enqueue_script(database_url: str, event: dict[str, Any], *account: str,
                       ) -> subprocess.CompletedProcess[str]:
    """examples/php/enqueue.php, run as docs/integrating.md prints it."""
    backend = make_url(database_url).get_backend_name()
    php = php_or_skip(PDO_DRIVER[backend])
    dsn, user, password = pdo_dsn(database_url)
    return subprocess.run([php, str(ENQUEUE_SCRIPT), dsn, user, *account],
                          input=json.dumps(event), env={**os.environ, "DB_PASSWORD": password},
                          capture_output=True, text=True, timeout=60)


def test_the_php_example_script_enqueues_once_and_a_worker_delivers_it(
    server_database_url: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    event = {"email": "jane.doe@example.com", "orderid": "PHP-1",
             "products": [{"id": "SKU-1", "quantity": 2, "price": 9.95}], "currency": "EUR"}
    first = run_enqueue_script(server_database_url, event)
    assert (first.returncode, first.stdout) == (0, "enqueued order PHP-1\n"), first.stderr
    again = run_enqueue_script(server_database_url, event)
    assert again.stdout == "order PHP-1 was already in the outbox: nothing added\n"
    store = run_enqueue_script(server_database_url, {**event, "orderid": "PHP-2"}, "shop-be")
    assert store.returncode == 0, store.stderr
    engine = make_engine(server_database_url)
    assert row(engine, "PHP-2").account == "shop-be"
    env = worker_environment(server_database_url, api.url)
    with running_worker("php-script", env, tmp_path):
        wait_for(lambda: statuses(engine).get("PHP-1") == "delivered", 30, "the delivery")
    engine.dispose()
    assert api.state.received()["orderids"] == {"PHP-1": 1}  # shop-be has no key here
    assert api.state.events_for("PHP-1") == [{**event, "event": "Purchase"}]


def test_the_php_example_script_says_how_to_use_it_and_what_the_database_refused(
    server_database_url: str,
) -> None:
    usage = run_enqueue_script(server_database_url, {}, "a", "b")
    assert usage.returncode == 2 and usage.stderr.startswith("usage: DB_PASSWORD=")
    too_long = run_enqueue_script(server_database_url, {"orderid": "X" * 200, "email": "a@b.c",
                                                        "products": []})
    assert too_long.returncode == 1 and "the database refused" in too_long.stderr
