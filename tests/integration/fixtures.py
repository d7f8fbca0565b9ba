"""Helpers shared by the delivery tests: the fake API, seeding rows, reading the outbox."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import OutboxEvent
from spotler_outbox.worker.console.cli import main
from tests.conftest import purchase

ACCOUNT = "test-account"
API_KEY = "test-key-do-not-log-7f3a9c"


def delivery_settings(database_url: str, api_url: str, **overrides: Any) -> Settings:
    # A lease of 12 s covers two requests of 1 + 2 s and the margin: the dispatch loop claims
    # ahead (pipelines) as it does with the defaults.
    values: dict[str, Any] = {
        "database_url": database_url, "api_url": api_url, "account": ACCOUNT,
        "api_key": API_KEY, "wakeup_enabled": False, "connect_timeout": 1.0,
        "read_timeout": 2.0, "lease_seconds": 12.0, "backoff_base": 0.05, "backoff_cap": 0.2,
        "auth_recheck_interval": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


def seed(engine: Engine, orderids: Iterable[str], settings: Settings) -> None:
    with Session(engine) as session, session.begin():
        for orderid in orderids:
            enqueue_purchase(session, purchase(orderid), settings=settings)


def statuses(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(OutboxEvent.orderid, OutboxEvent.status)).all())


def row(engine: Engine, orderid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(OutboxEvent.__table__).where(
            OutboxEvent.orderid == orderid)).one()


def insert_raw(engine: Engine, orderid: str, payload: str) -> None:
    """What an order system in another language does: a plain SQL insert."""
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO outbox_events (event, orderid, payload) "
                             "VALUES ('Purchase', :o, :p)"), {"o": orderid, "p": payload})


def seed_row(engine: Engine, orderid: str, **values: Any) -> int:
    """Enqueue one order, then set columns directly, as a worker would have; returns its id."""
    table = OutboxEvent.__table__
    with Session(engine) as session, session.begin():
        enqueue_purchase(session, purchase(orderid),
                         settings=Settings(database_url=str(engine.url), wakeup_enabled=False))
    with engine.begin() as conn:
        if values:
            conn.execute(sa.update(table).where(table.c.orderid == orderid).values(values))
        return int(conn.execute(sa.select(table.c.id).where(table.c.orderid == orderid))
                   .scalar_one())


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `spotler-outbox ARGV` in this process: exit code, stdout, stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
