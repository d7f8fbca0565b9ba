"""Shared fixtures: real databases (PostgreSQL, MariaDB, SQLite), migrated with Alembic.

Server URLs come from TEST_POSTGRES_URL / TEST_MARIADB_URL (defaults: this machine's servers).
A server that cannot be reached fails the run under CI=true and is skipped elsewhere.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from spotler_outbox import migrations
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import Settings, reset_settings
from spotler_outbox.models.tables import Base
from tests import mysql8_guard


def _own_names_per_xdist_worker() -> None:
    """Under pytest-xdist (`./dev test` runs two processes) each process gets databases and a
    Redis database of its own; set before anything reads them, subprocesses inherit them."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    if not worker or os.environ.get("_SPOTLER_TEST_NAMES_SET") == worker:
        return
    os.environ["_SPOTLER_TEST_NAMES_SET"] = worker
    base = os.environ.get("TEST_DB_NAME", "spotler_outbox_test")
    os.environ["TEST_DB_NAME"] = f"{base}_{worker}"
    redis_url = make_url(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    base = int(redis_url.database or 15)
    # Counting down from the base, past 0 (the default broker) and 13-14 (the benchmarks').
    free = [d % 16 for d in range(base, base - 16, -1) if d % 16 not in (0, 13, 14)]
    index = int(worker.removeprefix("gw"))
    if index >= len(free):
        raise pytest.UsageError(f"at most {len(free)} test processes: one Redis database each")
    os.environ["TEST_REDIS_URL"] = redis_url.set(database=str(free[index])).render_as_string(
        hide_password=False)


_own_names_per_xdist_worker()
# A separate name lets two test runs share the servers without wiping each other's rows.
TEST_DB = os.environ.get("TEST_DB_NAME", "spotler_outbox_test")
SERVER_URLS = {
    "postgresql": os.environ.get(
        "TEST_POSTGRES_URL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{TEST_DB}"),
    "mariadb": os.environ.get(
        "TEST_MARIADB_URL", f"mysql+pymysql://root@127.0.0.1:3306/{TEST_DB}?charset=utf8mb4"),
}
BACKENDS = ("postgresql", "mariadb", "sqlite")
_migrated: set[str] = set()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def create_database(url: str) -> None:
    """Create the test database on the server if it is not there yet."""
    parsed = make_url(url)
    name = parsed.database
    if parsed.get_backend_name() == "postgresql":
        admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                  {"n": name}).first()
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    else:
        admin = sa.create_engine(parsed.set(database=""))
        with admin.begin() as conn:
            # The server's default collation, as a shop's database would have it.
            conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{name}`"))
    admin.dispose()


def server_url(backend: str, database: str = TEST_DB) -> str:
    url = make_url(SERVER_URLS[backend]).set(database=database)
    rendered = url.render_as_string(hide_password=False)
    try:
        create_database(rendered)
    except sa.exc.OperationalError as e:
        message = f"{backend} server not reachable at {url.host}:{url.port}: {e.orig}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return rendered


def backend_url(backend: str, tmp_root: Path, database: str = TEST_DB) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_root / (database + '.db')}"
    return server_url(backend, database)


def wipe(engine: Engine) -> None:
    """Empty every outbox table and reset the control row, keeping the migrated schema."""
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name == "dispatch_control":
                # The default account's row stays, as the migration made it; others go.
                conn.execute(table.delete().where(table.c.account != ""))
                conn.execute(table.update().values(
                    {c.name: None for c in table.columns if c.nullable}))
            else:
                conn.execute(table.delete())


def pytest_configure(config: pytest.Config) -> None:
    """The MySQL 8 guard (tests/mysql8_guard.py) in this process and every one it starts."""
    site = str(Path(__file__).parent / "mysql8_site")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (site, os.environ.get("PYTHONPATH")) if p)
    log = Path(tempfile.mkdtemp(prefix="mysql8-guard-")) / "violations.log"
    os.environ[mysql8_guard.LOG_VARIABLE] = str(log)
    mysql8_guard.install()


@pytest.fixture(autouse=True)
def _mysql8_guard() -> Iterator[None]:
    """Fails the test when any process ran a statement MySQL 8 lacks on MariaDB."""
    log = Path(os.environ[mysql8_guard.LOG_VARIABLE])
    log.unlink(missing_ok=True)
    yield
    if log.exists():
        pytest.fail("MariaDB-only syntax sent to the server:\n" + log.read_text())


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outbox")


def _migrated_url(backend: str, tmp_root: Path) -> str:
    url = backend_url(backend, tmp_root)
    if url not in _migrated:
        migrations.upgrade(url)
        _migrated.add(url)
    return url


def empty_database(backend: str, tmp_root: Path) -> str:
    """The backend's test database, migrated once per session and emptied for this test."""
    url = _migrated_url(backend, tmp_root)
    engine = make_engine(url)
    wipe(engine)
    engine.dispose()
    return url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_root: Path) -> str:
    """A migrated, empty outbox database on each of the three backends."""
    return empty_database(request.param, tmp_root)


@pytest.fixture(params=("postgresql", "mariadb"))
def server_database_url(request: pytest.FixtureRequest, tmp_root: Path) -> str:
    """The same, on the two client-server databases only (for multi-process tests)."""
    return empty_database(request.param, tmp_root)


@pytest.fixture
def postgres_url(tmp_root: Path) -> str:
    """The migrated, emptied PostgreSQL test database alone."""
    return empty_database("postgresql", tmp_root)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, wakeup_enabled=False)


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    reset_settings()
    yield
    reset_settings()


def purchase(orderid: str = "1001", **overrides: object) -> dict[str, object]:
    """A valid Purchase event in Spotler's shape."""
    event: dict[str, object] = {
        "event": "Purchase",
        "email": "jane.doe@example.com",
        "orderid": orderid,
        "products": [{"id": "SKU-1", "quantity": 2, "price": 9.95}],
        "currency": "EUR",
    }
    event.update(overrides)
    return event
