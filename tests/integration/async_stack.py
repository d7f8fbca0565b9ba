"""The async drivers spotler_outbox.asyncio supports, on the test databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.conftest import empty_database

# driver -> (the test database it runs on, its SQLAlchemy URL scheme)
ASYNC_DRIVERS = {
    "asyncpg": ("postgresql", "postgresql+asyncpg"),
    "psycopg_async": ("postgresql", "postgresql+psycopg_async"),
    "aiomysql": ("mariadb", "mysql+aiomysql"),
}


def async_url(sync_url: str, driver: str) -> str:
    scheme = ASYNC_DRIVERS[driver][1]
    return make_url(sync_url).set(drivername=scheme).render_as_string(hide_password=False)


def async_database(driver: str, tmp_root: Path) -> tuple[str, str]:
    """(sync URL, async URL) of the driver's test database, migrated and emptied."""
    pytest.importorskip({"psycopg_async": "psycopg"}.get(driver, driver))
    url = empty_database(ASYNC_DRIVERS[driver][0], tmp_root)
    return url, async_url(url, driver)


def shop_engine(url: str, **options: object) -> AsyncEngine:
    """An engine as an async shop makes it: SQLAlchemy's defaults, nothing of ours."""
    return create_async_engine(url, **options)  # type: ignore[arg-type]
