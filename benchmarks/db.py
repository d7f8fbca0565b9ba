"""The benchmark's own PostgreSQL database: created, migrated and emptied before each phase."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from spotler_outbox import migrations
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.validation import canonical_json, validate_purchase

DEFAULT_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/spotler_outbox_bench")

# The order system's own table: the "order transaction" the enqueue rides along with.
bench_meta = sa.MetaData()
bench_orders = sa.Table(
    "bench_orders", bench_meta,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("orderid", sa.String(128), nullable=False, unique=True),
    sa.Column("email", sa.String(256), nullable=False),
    sa.Column("total", sa.Numeric(12, 2), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

OUTBOX_TABLES = ("delivery_attempt_events", "delivery_attempts", "outbox_events", "bench_orders")


def purchase(orderid: str, n: int) -> dict[str, Any]:
    """A realistic Purchase: two products, about 300 bytes once serialised."""
    return {
        "event": "Purchase", "email": f"customer{n}@example.com", "orderid": orderid,
        "products": [{"id": f"SKU-{n % 97}", "quantity": 1 + n % 3, "price": 9.95},
                     {"id": "SKU-GIFTWRAP", "quantity": 1, "price": 2.50}],
        "currency": "EUR", "firstname": "Jane", "lastname": "Doe",
    }


def order_row(orderid: str, n: int) -> dict[str, Any]:
    return {"orderid": orderid, "email": f"customer{n}@example.com", "total": 22.40}


def prepare(url: str) -> Engine:
    """Create the database afresh, migrate it to head, and add the order table.

    Dropped first, not reused: a migration edited in place since the last run would otherwise
    leave an old schema behind Alembic's "already at head".
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise SystemExit(f"the benchmark needs PostgreSQL, got {url!r}")
    if not (parsed.database or "").endswith("_bench"):
        raise SystemExit(f"refusing to drop {parsed.database!r}: the name must end in _bench")
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()
    migrations.upgrade(url)
    engine = make_engine(url)
    bench_meta.create_all(engine)
    return engine


def wipe(engine: Engine) -> None:
    """Empty every table and clear the dispatch control row, so no phase sees another's rows."""
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(OUTBOX_TABLES)} RESTART IDENTITY"))
        conn.execute(sa.text("UPDATE dispatch_control SET paused_reason = NULL, "
                             "paused_since = NULL, next_auth_check_at = NULL, "
                             "not_before = NULL"))


def insert_pending(engine: Engine, count: int) -> None:
    """`count` due rows, as enqueue would leave them, in one multi-row statement per 1000."""
    rows = []
    for n in range(count):
        event = validate_purchase(purchase(f"raw-{n}", n))
        rows.append({"event": "Purchase", "orderid": event["orderid"],
                     "payload": canonical_json(event)})
    with engine.begin() as conn:
        for start in range(0, count, 1000):
            conn.execute(sa.text("INSERT INTO outbox_events (event, orderid, payload) "
                                 "VALUES (:event, :orderid, :payload)"), rows[start:start + 1000])
        conn.execute(sa.text("ANALYZE outbox_events"))


def count_status(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {status: int(n) for status, n in conn.execute(sa.text(
            "SELECT status, count(*) FROM outbox_events GROUP BY status"))}


def delivered_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM outbox_events WHERE status = 'delivered'")).scalar_one())


def delivered_times(engine: Engine) -> dict[str, float]:
    """orderid -> delivered_at as epoch seconds (the worker's clock, on this same machine)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT orderid, delivered_at FROM outbox_events "
                                    "WHERE delivered_at IS NOT NULL")).all()
    return {orderid: at.timestamp() for orderid, at in rows}


def postgres_pids(engine: Engine) -> list[int]:
    """Backends of this database and the server's own processes, not other databases' clients.

    Other sessions on this machine run their tests against the same server: their backends'
    CPU is theirs, not the pipeline's.
    """
    with engine.connect() as conn:
        return [int(pid) for pid in conn.execute(sa.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "OR backend_type <> 'client backend'")).scalars()]


def first_attempt_started(engine: Engine) -> float:
    with engine.connect() as conn:
        return float(conn.execute(sa.text(
            "SELECT extract(epoch FROM min(started_at)) FROM delivery_attempts")).scalar_one())


def server_version(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SHOW server_version")).scalar_one())


def attempts_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM delivery_attempts")).scalar_one())
