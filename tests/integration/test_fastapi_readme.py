"""The README's FastAPI example, run as printed against PostgreSQL on asyncpg."""

from __future__ import annotations

import asyncio
import re
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import reset_settings
from tests.integration.async_stack import async_database
from tests.integration.fixtures import statuses
from tests.integration.workers import REDIS_URL

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_fastapi_example() -> str:
    found = re.search(r"<!-- fastapi-example -->\n```python\n(.*?)```", README.read_text(),
                      re.DOTALL)
    assert found, "the README lost its FastAPI example"
    return found.group(1)


def test_the_readme_fastapi_example_commits_the_order_and_its_outbox_row_together(
    tmp_root: Path, monkeypatch: pytest.MonkeyPatch, broker: redis.Redis,
) -> None:
    sync_url, url = async_database("asyncpg", tmp_root)
    monkeypatch.setenv("OUTBOX_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("OUTBOX_WAKEUP", "true")
    reset_settings()
    # A module of its own, as the shop's app.py is: SQLAlchemy reads the models' annotations
    # through sys.modules.
    module = types.ModuleType("readme_fastapi_shop")
    module.SHOP_DATABASE_URL = url  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(readme_fastapi_example(), str(README), "exec"), module.__dict__)
    shop = module.__dict__
    tables = make_engine(sync_url)  # the shop's own migration, in short
    shop["Base"].metadata.drop_all(tables)
    shop["Base"].metadata.create_all(tables)

    async def customers() -> tuple[Any, Any]:
        transport = httpx.ASGITransport(app=shop["app"])
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                placed = await client.post("/checkout", json={
                    "email": "jane@example.com", "products": [{"id": "SKU-1", "quantity": 1}]})
                refused = await client.post("/checkout", json={
                    "email": "jane@example.com", "products": [{"id": "SKU-1", "quantity": 0}]})
        finally:
            await shop["engine"].dispose()
        return placed, refused

    placed, refused = asyncio.run(customers())
    assert placed.status_code == 201, placed.text
    orderid = str(placed.json()["order"])
    assert refused.status_code == 422
    assert refused.json()["problems"] == [
        "products[0].quantity: must be a positive integer, got number 0"]
    assert statuses(tables) == {orderid: "pending"}
    with tables.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM fastapi_orders")).scalar() == 1
    deadline = time.monotonic() + 10
    while not broker.llen("celery") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.llen("celery") == 1  # the workers were woken once, for the committed order
    shop["Base"].metadata.drop_all(tables)
    tables.dispose()
