"""What enqueue_purchase adds to an order transaction, next to a raw INSERT of the same row.

    .venv/bin/python -m benchmarks.enqueue_cost [ORDERS]

One run, both kinds interleaved (so drift in the machine hits both alike): each transaction
inserts the shop's order row, then either calls `enqueue_purchase` (validation, the insert,
the wake-up request; wake-ups on, to the broker in OUTBOX_BROKER_URL) or executes the plain
SQL a shop would write itself (json.dumps of the event and the INSERT ... ON CONFLICT /
INSERT IGNORE of the README), and commits. On PostgreSQL a third kind runs that raw INSERT
never prepared on the server, as the enqueue's own statements always are (PgBouncer in
transaction mode; psycopg prepares a statement after 5 runs by default): the ratio to it is
what enqueue_purchase adds over the raw INSERT at equal terms. For PostgreSQL and MariaDB
(BENCH_POSTGRES_URL, BENCH_MARIADB_URL) it prints medians of: the call alone (the figure the
ratios are of: what each adds to the transaction), the commit (where the wake-up hook runs),
and the whole transaction (dominated by the commit's flush to disk).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from benchmarks.db import purchase
from spotler_outbox import enqueue_purchase, migrations
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.enqueue import never_prepared
from spotler_outbox.models.settings import get_settings

URLS = {
    "postgresql": os.environ.get(
        "BENCH_POSTGRES_URL",
        "postgresql+psycopg://postgres@127.0.0.1:5432/spotler_outbox_bench_enqueue"),
    "mariadb": os.environ.get(
        "BENCH_MARIADB_URL",
        "mysql+pymysql://root@127.0.0.1:3306/spotler_outbox_bench_enqueue?charset=utf8mb4"),
}
_orders = sa.Table("bench_enqueue_orders", sa.MetaData(),
                   sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
                   sa.Column("email", sa.String(200), nullable=False))
_RAW = {
    "postgresql": "INSERT INTO outbox_events (event, orderid, payload) "
                  "VALUES (:event, :orderid, :payload) "
                  "ON CONFLICT (account, event, orderid) DO NOTHING",
    "mariadb": "INSERT IGNORE INTO outbox_events (event, orderid, payload) "
               "VALUES (:event, :orderid, :payload)",
}


@dataclass(frozen=True)
class Span:
    call_ms: float
    commit_ms: float
    transaction_ms: float


@dataclass(frozen=True)
class EnqueueCost:
    database: str
    transactions: int
    enqueue: Span  # medians with enqueue_purchase
    raw_insert: Span  # medians with the raw INSERT
    raw_unprepared: Span | None = None  # the raw INSERT never prepared (PostgreSQL only)

    @property
    def ratio(self) -> float:
        """What enqueue_purchase adds to the transaction over what the raw INSERT adds."""
        return self.enqueue.call_ms / self.raw_insert.call_ms

    def line(self) -> str:
        e, r, u = self.enqueue, self.raw_insert, self.raw_unprepared
        unprepared = "" if u is None else (
            f" | raw INSERT never prepared {u.call_ms:.3f} ms: "
            f"{e.call_ms / u.call_ms:.2f}x")
        return (f"{self.database:<10} enqueue_purchase {e.call_ms:.3f} ms vs raw INSERT "
                f"{r.call_ms:.3f} ms: {self.ratio:.2f}x{unprepared} | commit {e.commit_ms:.3f} "
                f"vs {r.commit_ms:.3f} ms | whole transaction {e.transaction_ms:.3f} vs "
                f"{r.transaction_ms:.3f} ms: {e.transaction_ms / r.transaction_ms:.2f}x "
                f"(medians of {self.transactions} each)")


def _prepare(url: str) -> sa.Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                {"n": parsed.database}).first():
                conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
    else:
        admin = sa.create_engine(parsed.set(database=""))
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{parsed.database}`"))
    admin.dispose()
    migrations.upgrade(url)
    engine = make_engine(url)
    _orders.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM outbox_events"))
        conn.execute(_orders.delete())
    return engine


def measure(database: str, transactions: int = 2000, url: str | None = None,
            broker_url: str | None = None) -> EnqueueCost:
    """Median order-transaction time with enqueue_purchase and with a raw INSERT."""
    engine = _prepare(url or URLS[database])
    settings = get_settings().with_overrides(database_url=str(engine.url), wakeup_enabled=True)
    if broker_url:
        settings = settings.with_overrides(broker_url=broker_url)
    raw = sa.text(_RAW[database])
    add_order = _orders.insert()
    timings: dict[str, list[tuple[float, float, float]]] = {"enqueue": [], "raw": [],
                                                            "unprepared": []}

    def enqueue(session: Session, n: int) -> None:
        enqueue_purchase(session, purchase(f"E-{n}", n), settings=settings)

    def raw_insert(session: Session, n: int, prefix: str = "R") -> None:
        event = purchase(f"{prefix}-{n}", n)
        session.execute(raw, {"event": "Purchase", "orderid": event["orderid"],
                              "payload": json.dumps(event, separators=(",", ":"))})

    def raw_unprepared(session: Session, n: int) -> None:
        with never_prepared(session.connection().connection.driver_connection):
            raw_insert(session, n, "U")

    kinds: tuple[tuple[str, Callable[[Session, int], None]], ...] = (
        ("enqueue", enqueue), ("raw", raw_insert))
    if database == "postgresql":
        kinds += (("unprepared", raw_unprepared),)
    for n in range(-200, transactions):  # the first 200 warm caches and pools up
        for name, add_outbox_row in (kinds if n % 2 else kinds[::-1]):
            started = time.perf_counter()
            with Session(engine) as session:
                session.execute(add_order, {"email": f"customer{n}@example.com"})
                call_started = time.perf_counter()
                add_outbox_row(session, n + 200)
                commit_started = time.perf_counter()
                session.commit()
                ended = time.perf_counter()
            if n >= 0:
                timings[name].append((commit_started - call_started, ended - commit_started,
                                      ended - started))
    engine.dispose()
    return EnqueueCost(database, transactions, _medians(timings["enqueue"]),
                       _medians(timings["raw"]),
                       _medians(timings["unprepared"]) if timings["unprepared"] else None)


def _medians(samples: list[tuple[float, float, float]]) -> Span:
    call, commit, whole = (statistics.median(column) * 1000 for column in zip(*samples,
                                                                               strict=True))
    return Span(call, commit, whole)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    transactions = int(args[0]) if args else 2000
    for database in URLS:
        print(measure(database, transactions).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
