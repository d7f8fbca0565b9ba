"""`spotler-outbox grants`: each user can do its part on the outbox and nothing else."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import reset_settings
from spotler_outbox.worker.console.cli import main
from spotler_outbox.worker.console.exporter import OutboxCollector
from tests.conftest import purchase
from tests.integration.fixtures import seed_row, statuses
from tests.integration.roles import role_urls

SHOP_TABLE = "shop_orders"
REFUSED = (sa.exc.ProgrammingError, sa.exc.OperationalError)


def as_user(server_database_url: str, role: str) -> Engine:
    return make_engine(role_urls(server_database_url)[role])


@pytest.fixture
def shop_table(server_database_url: str) -> str:
    """A table of the shop's own, beside the outbox, created by the shop's owner."""
    engine = make_engine(server_database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {SHOP_TABLE} "
                             "(id INTEGER PRIMARY KEY, email VARCHAR(200))"))
        conn.execute(sa.text(f"DELETE FROM {SHOP_TABLE}"))
        conn.execute(sa.text(f"INSERT INTO {SHOP_TABLE} VALUES (1, 'jane@example.com')"))
    engine.dispose()
    return SHOP_TABLE


@pytest.mark.parametrize("role", ["worker", "producer", "operator"])
def test_no_outbox_user_can_read_or_change_a_shop_table(
    server_database_url: str, shop_table: str, role: str,
) -> None:
    engine = as_user(server_database_url, role)
    for statement in (f"SELECT email FROM {shop_table}",
                      f"UPDATE {shop_table} SET email = 'x' WHERE id = 1",
                      f"DELETE FROM {shop_table}"):
        with pytest.raises(REFUSED, match=r"(?i)denied"), engine.begin() as conn:
            conn.execute(sa.text(statement))
    engine.dispose()


def test_the_producer_inserts_into_the_outbox_but_cannot_change_or_delete_a_row(
    server_database_url: str,
) -> None:
    engine = as_user(server_database_url, "producer")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO outbox_events (event, orderid, payload) "
                             "VALUES ('Purchase', 'G-1', :p)"), {"p": json.dumps(purchase("G-1"))})
    for statement in ("UPDATE outbox_events SET status = 'delivered'",
                      "DELETE FROM outbox_events", "SELECT * FROM delivery_attempts"):
        with pytest.raises(REFUSED, match=r"(?i)denied"), engine.begin() as conn:
            conn.execute(sa.text(statement))
    engine.dispose()


def test_the_worker_cannot_insert_or_delete_outbox_rows(server_database_url: str) -> None:
    engine = as_user(server_database_url, "worker")
    for statement in ("INSERT INTO outbox_events (event, orderid, payload) "
                      "VALUES ('Purchase', 'G-2', '{}')", "DELETE FROM outbox_events"):
        with pytest.raises(REFUSED, match=r"(?i)denied"), engine.begin() as conn:
            conn.execute(sa.text(statement))
    engine.dispose()


def test_grants_for_sqlite_is_a_one_line_error_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", "sqlite:///outbox.db")
    assert main(["grants"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sqlite has no users" in err


def test_a_user_name_that_is_not_a_plain_sql_name_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", "postgresql+psycopg://u@h/shop")
    assert main(["grants", "--worker", "w'; DROP TABLE orders; --"]) == 2
    assert "--worker" in capsys.readouterr().err


def test_the_operator_user_can_run_the_operators_commands(
    server_database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    owner = make_engine(server_database_url)
    seed_row(owner, "OP-1", status="failed", last_error="boom")
    seed_row(owner, "OP-3", status="delivered", delivered_at=utc_now() - dt.timedelta(days=40))
    monkeypatch.setenv("OUTBOX_DATABASE_URL", role_urls(server_database_url)["operator"])
    orders = tmp_path / "orders.jsonl"
    orders.write_text(json.dumps(purchase("OP-2")) + "\n")
    for argv in (["status"], ["list"], ["show", "OP-1"], ["retry", "OP-1"], ["import", str(orders)],
                 ["import", "--dry-run", str(orders)], ["purge", "--delivered-before", "1d"],
                 ["forget", "--email", "jane.doe@example.com", "--yes"]):
        reset_settings()
        # status finds OP-1 failed: a problem found (1), not a refused statement (2).
        assert main(argv) == (1 if argv == ["status"] else 0), argv
    assert set(statuses(owner)) == {"OP-1", "OP-2", "OP-3"}  # OP-3 purged: emptied, kept
    with owner.connect() as conn:
        assert set(conn.execute(sa.text("SELECT payload FROM outbox_events")).scalars()) == {""}
    owner.dispose()


def test_the_metrics_exporter_can_read_the_outbox_as_the_worker_user(
    server_database_url: str,
) -> None:
    seed_row(make_engine(server_database_url), "M-1")
    engine = as_user(server_database_url, "worker")
    collector = OutboxCollector(engine)
    for _ in range(2):  # the first scrape starts the attempt feed, the second reads it
        up = {m.name: m.samples[0].value for m in collector.collect()}["spotler_outbox_up"]
        assert up == 1
    engine.dispose()
