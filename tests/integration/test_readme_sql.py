"""The README's plain-SQL statements, run exactly as printed on the three databases."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.models.database import make_engine
from spotler_outbox.worker.dispatch import Dispatcher
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from spotler_outbox.worker.spotler.client import SpotlerClient
from tests.conftest import BACKENDS
from tests.integration.fixtures import delivery_settings, row

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
# A block the tests run is marked by an HTML comment (invisible on GitHub) just above it.
_BLOCK = re.compile(r"<!-- tested: (\S+) ([\w ]+) -->\n```sql\n(.*?)```", re.S)
BLOCKS = [(kind, set(backends.split()), text) for kind, backends, text in _BLOCK.findall(README)]


def block(kind: str, backend: str) -> str:
    [text] = [text for k, backends, text in BLOCKS if k == kind and backend in backends]
    return text


def run_as_printed(engine: Engine, text: str) -> list[list[tuple[object, ...]]]:
    """Each statement of the block through the driver's own cursor: no parameter parsing,
    no rewriting; the rows each one returns."""
    results = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement in re.split(r";[ \t]*$", text, flags=re.M):
            if not re.sub(r"--[^\n]*", "", statement).strip():
                continue
            cursor.execute(statement)
            results.append([tuple(r) for r in cursor.fetchall()] if cursor.description else [])
        raw.commit()
    finally:
        raw.close()
    return results


@pytest.mark.parametrize("kind", ["plain-sql-insert", "plain-sql-operator"])
def test_the_readme_marks_one_block_of_each_kind_for_every_database(kind: str) -> None:
    for backend in BACKENDS:
        assert block(kind, backend)


def test_the_readmes_insert_runs_as_printed_twice_as_one_row_and_is_delivered(
    database_url: str, api: RunningFakeApi,
) -> None:
    engine = make_engine(database_url)
    statement = block("plain-sql-insert", engine.dialect.name.replace("mysql", "mariadb"))
    run_as_printed(engine, statement)
    run_as_printed(engine, statement)  # the order saved again: a no-op, not an error
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM outbox_events")).scalar_one() == 1
    assert row(engine, "1001").status == "pending"
    settings = delivery_settings(database_url, api.url)
    Dispatcher(engine, SpotlerClient(settings), settings, worker_name="readme").run(
        budget_seconds=5)
    assert row(engine, "1001").status == "delivered"
    assert api.state.received()["orderids"] == {"1001": 1}

    # The operator's questions, as printed: delivered, after one recorded attempt.
    answer, attempts = run_as_printed(
        engine, block("plain-sql-operator", engine.dialect.name.replace("mysql", "mariadb")))
    engine.dispose()
    assert [r[0] for r in answer] == ["delivered"]
    assert len(attempts) == 1 and attempts[0][3] == 200 and attempts[0][4] == "delivered"
