"""The benchmarks' own databases (PostgreSQL or MariaDB): made afresh, filled, read, dropped.

Every benchmark database name must end in `_bench`: it is dropped without asking.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from spotler_outbox import migrations
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.tables import events
from spotler_outbox.models.validation import canonical_json, validate_purchase

POSTGRES_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/spotler_outbox_bench")
MARIADB_URL = os.environ.get(
    "BENCH_MARIADB_URL",
    "mysql+pymysql://root@127.0.0.1:3306/spotler_outbox_bench?charset=utf8mb4")
TABLES = ("delivery_attempt_events", "delivery_attempts", "outbox_events")


def is_postgres(engine_or_url: Engine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else engine_or_url.url
    return make_url(url).get_backend_name() == "postgresql"


def purchase(orderid: str, n: int) -> dict[str, Any]:
    """A realistic Purchase: two products, about 300 bytes once serialised."""
    return {
        "event": "Purchase", "email": f"customer{n}@example.com", "orderid": orderid,
        "products": [{"id": f"SKU-{n % 97}", "quantity": 1 + n % 3, "price": 9.95},
                     {"id": "SKU-GIFTWRAP", "quantity": 1, "price": 2.50}],
        "currency": "EUR", "firstname": "Jane", "lastname": "Doe",
    }


def _admin(url: str) -> tuple[Engine, str]:
    parsed = make_url(url)
    name = parsed.database or ""
    if not name.endswith("_bench"):
        raise SystemExit(f"refusing to drop {name!r}: the name must end in _bench")
    admin_db = "postgres" if is_postgres(url) else "mysql"
    engine = sa.create_engine(parsed.set(database=admin_db), isolation_level="AUTOCOMMIT")
    return engine, name


def drop(url: str) -> None:
    admin, name = _admin(url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' if is_postgres(url)
                             else f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


def prepare(url: str) -> Engine:
    """Created afresh (a migration edited in place must not leave an old schema behind
    Alembic's "already at head") and migrated to head."""
    drop(url)
    admin, name = _admin(url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"' if is_postgres(url) else
                             f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    admin.dispose()
    migrations.upgrade(url)
    return make_engine(url)


def wipe(engine: Engine) -> None:
    """Empty every outbox table and clear the dispatch control row."""
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(sa.text(f"DELETE FROM {table}"))
        conn.execute(sa.text("UPDATE dispatch_control SET paused_reason = NULL, "
                             "paused_since = NULL, next_auth_check_at = NULL, "
                             "not_before = NULL"))
    if is_postgres(engine):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"VACUUM ANALYZE {', '.join(TABLES)}"))


# A Purchase as enqueue stores it (canonical JSON), made by PostgreSQL itself: millions of
# rows of Python parameters over the socket would take longer than the benchmark they are for.
# A bind parameter, because in sa.text() its `:9.95`-like fragments would read as parameters.
PAYLOAD = ('{"event":"Purchase","email":"customer%1$s@example.com","orderid":"%2$s",'
           '"products":[{"id":"SKU-%3$s","quantity":%4$s,"price":9.95},'
           '{"id":"SKU-GIFTWRAP","quantity":1,"price":2.5}],'
           '"currency":"EUR","firstname":"Jane","lastname":"Doe"}')
PAYLOAD_SQL = "format(CAST(:template AS text), n, :prefix || n, n % 97, 1 + n % 3)"
_PENDING_SQL = sa.text(f"""
INSERT INTO outbox_events (event, orderid, payload)
SELECT 'Purchase', :prefix || n, {PAYLOAD_SQL}
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n""")


def insert_pending(engine: Engine, count: int, *, due_in: float = 0.0, prefix: str = "raw-",
                   offset: int = 0, by_server: bool = False) -> None:
    """`count` rows as enqueue leaves them, due `due_in` seconds from now; `by_server`: made
    by PostgreSQL (fast, due now)."""
    if by_server:
        with engine.begin() as conn:
            conn.execute(_PENDING_SQL, {"template": PAYLOAD, "prefix": prefix,
                                        "lo": offset + 1, "hi": offset + count})
        return
    due = utc_now() + dt.timedelta(seconds=due_in)
    rows = [{"event": "Purchase", "orderid": f"{prefix}{n}", "next_attempt_at": due,
             "payload": canonical_json(validate_purchase(purchase(f"{prefix}{n}", n)))}
            for n in range(offset, offset + count)]
    with engine.begin() as conn:
        for start in range(0, count, 1000):
            conn.execute(events.insert(), rows[start:start + 1000])
    if is_postgres(engine):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE outbox_events"))


def scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


def statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {s: int(n) for s, n in conn.execute(sa.text(
            "SELECT status, count(*) FROM outbox_events GROUP BY status"))}


def _epoch(value: dt.datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


def delivered_times(engine: Engine) -> dict[str, float]:
    """orderid -> delivered_at, epoch seconds (the worker's clock, on this same machine)."""
    with engine.connect() as conn:
        return {o: _epoch(at) for o, at in conn.execute(sa.text(
            "SELECT orderid, delivered_at FROM outbox_events WHERE delivered_at IS NOT NULL"))}


def drain_span(engine: Engine) -> tuple[float, float, int]:
    """First request's start, last delivered_at (epoch seconds), and the requests made."""
    with engine.connect() as conn:
        first, requests = conn.execute(sa.text(
            "SELECT min(started_at), count(*) FROM delivery_attempts")).one()
        last = conn.execute(sa.text("SELECT max(delivered_at) FROM outbox_events")).scalar_one()
    return _epoch(first), _epoch(last), int(requests)


def server_version(engine: Engine) -> str:
    return str(scalar(engine, "SELECT version()")).split(" on ")[0]


class ServerWork:
    """The /proc stat files of the database server's work: `sessions()` for this database's
    connections (the benchmark's own `own` session left out), `background()` for the server's
    own processes or threads (WAL writer, checkpointer; InnoDB's purge, page cleaner, log
    writer), which serve every database on the server: other sessions run tests on it too.

    MariaDB is one process: its connection threads are told apart by the TIDs the process
    list shows, noted at start, at stop, and at every `note()` in between, so that threads
    seen serving another database's connection count in neither figure.
    """

    def __init__(self, engine: Engine, own: int) -> None:
        self.engine, self.own = engine, own
        self.postgres = is_postgres(engine)
        self.seen: set[int] = set()  # MariaDB: every thread seen serving any connection
        self.mine: set[int] = set()

    def note(self, conn: sa.Connection) -> None:
        if not self.postgres:
            for tid, mine in conn.execute(sa.text(
                    "SELECT TID, DB <=> DATABASE() FROM information_schema.PROCESSLIST")):
                self.seen.add(int(tid))
                if mine and int(tid) != self.own:
                    self.mine.add(int(tid))

    def _pg(self, where: str) -> list[str]:
        with self.engine.connect() as conn:
            return [f"/proc/{p}/stat" for p in conn.execute(sa.text(
                f"SELECT pid FROM pg_stat_activity WHERE {where}")).scalars() if p != self.own]

    def _maria(self) -> tuple[int, list[int]]:
        with self.engine.connect() as conn:
            self.note(conn)
            tid = int(conn.execute(sa.text("SELECT TID FROM information_schema.PROCESSLIST "
                                           "WHERE ID = CONNECTION_ID()")).scalar_one())
        for line in open(f"/proc/{tid}/status"):  # noqa: SIM115 - read to the end
            if line.startswith("Tgid:"):  # the server process owning that thread
                pid = int(line.split()[1])
        return pid, [int(t) for t in os.listdir(f"/proc/{pid}/task")]

    def sessions(self) -> list[str]:
        if self.postgres:
            return self._pg("datname = current_database()")
        pid, tids = self._maria()
        return [f"/proc/{pid}/task/{t}/stat" for t in tids if t in self.mine]

    def background(self) -> list[str]:
        if self.postgres:
            return self._pg("backend_type <> 'client backend'")
        pid, tids = self._maria()
        return [f"/proc/{pid}/task/{t}/stat" for t in tids if t not in self.seen]


def own_session_id(conn: sa.Connection) -> int:
    """This session's server pid (PostgreSQL) or thread id (MariaDB)."""
    return int(conn.execute(sa.text(
        "SELECT pg_backend_pid()" if conn.dialect.name == "postgresql" else
        "SELECT TID FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()"))
        .scalar_one())
