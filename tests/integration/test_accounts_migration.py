"""Upgrading a single-account outbox to accounts keeps every row, its status and the pause."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from spotler_outbox import migrations
from spotler_outbox.models.database import make_engine
from tests.conftest import BACKENDS, TEST_DB, backend_url

# (orderid, status, attempts, last_error), written with the columns revision 0003 knows.
ROWS = [("1", "pending", 0, None), ("2", "in_flight", 1, None), ("3", "delivered", 1, None),
        ("4", "failed", 17, "gave up after the last attempt: HTTP 503"),
        ("ab-1", "pending", 2, "HTTP 503"), ("AB-1", "delivered", 1, None)]
COLUMNS = "orderid, status, attempts, last_error"


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_upgrade_from_a_single_account_outbox_keeps_every_row_status_and_the_pause(
    backend: str, tmp_root: Path
) -> None:
    url = backend_url(backend, tmp_root, database=f"{TEST_DB}_accounts_upgrade")
    engine = make_engine(url)
    empty_and_downgrade(engine, url)
    migrations.upgrade(url, "0003")
    try:
        with engine.begin() as conn:
            for orderid, status, attempts, error in ROWS:
                conn.execute(sa.text(
                    "INSERT INTO outbox_events (event, orderid, payload, status, attempts, "
                    "last_error) VALUES ('Purchase', :o, '{}', :s, :a, :e)"),
                    {"o": orderid, "s": status, "a": attempts, "e": error})
            conn.execute(sa.text("UPDATE dispatch_control SET paused_reason = 'HTTP 401' "
                                 "WHERE id = 1"))
            before = conn.execute(sa.text(
                f"SELECT id, {COLUMNS}, created_at FROM outbox_events ORDER BY id")).all()
        migrations.upgrade(url)
        with engine.begin() as conn:
            after = conn.execute(sa.text(
                f"SELECT id, {COLUMNS}, created_at FROM outbox_events ORDER BY id")).all()
            accounts = conn.execute(sa.text("SELECT DISTINCT account FROM outbox_events")).all()
            control = conn.execute(sa.text(
                "SELECT account, paused_reason FROM dispatch_control")).all()
            # The new key: the same orderid in another store is another order.
            conn.execute(sa.text("INSERT INTO outbox_events (account, event, orderid, payload) "
                                 "VALUES ('shop-be', 'Purchase', '1', '{}')"))
            with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(sa.text("INSERT INTO outbox_events (event, orderid, payload) "
                                     "VALUES ('Purchase', '1', '{}')"))
        assert after == before and len(after) == len(ROWS)
        assert accounts == [("",)]
        assert control == [("", "HTTP 401")]
    finally:
        empty_and_downgrade(engine, url)
        engine.dispose()


def empty_and_downgrade(engine: sa.Engine, url: str) -> None:
    """Downgrading below 0006 refuses while other accounts' rows could collide: empty first."""
    with engine.begin() as conn:
        if sa.inspect(conn).has_table("outbox_events"):
            conn.execute(sa.text("DELETE FROM outbox_events"))
    migrations.downgrade(url, "base")
