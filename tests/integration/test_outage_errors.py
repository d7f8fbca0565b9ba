"""Which of a real server's errors are an outage (waited out, one log line) and which a bug
(raised with its traceback). Each error is produced by the server itself; the labels are
written by hand from what the error means to an operator."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from spotler_outbox.models.database import database_unavailable, make_engine
from tests.services import free_port

Statement = Callable[[sa.Connection], object]


def write_on_a_read_only_node(conn: sa.Connection) -> object:
    # What a demoted primary or a read-only replica answers a write with.
    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
    return conn.exec_driver_sql("UPDATE dispatch_control SET account = account")


def syntax_error(conn: sa.Connection) -> object:
    return conn.exec_driver_sql("SELEC 1")


def missing_table(conn: sa.Connection) -> object:
    return conn.exec_driver_sql("SELECT * FROM no_such_table_here")


def duplicate_key(conn: sa.Connection) -> object:
    conn.exec_driver_sql("CREATE TEMPORARY TABLE once_only (id INT PRIMARY KEY)")
    conn.exec_driver_sql("INSERT INTO once_only VALUES (1)")
    return conn.exec_driver_sql("INSERT INTO once_only VALUES (1)")


CASES: list[tuple[str, Statement, bool]] = [
    ("read-only-node", write_on_a_read_only_node, True),
    ("syntax-error", syntax_error, False),
    ("missing-table", missing_table, False),
    ("duplicate-key", duplicate_key, False),
]


@pytest.mark.parametrize(("case", "statement", "outage"), CASES, ids=[c[0] for c in CASES])
def test_a_read_only_server_is_an_outage_and_a_broken_statement_is_a_bug(
    server_database_url: str, case: str, statement: Statement, outage: bool,
) -> None:
    engine = make_engine(server_database_url)
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised, engine.begin() as conn:
            statement(conn)
    finally:
        engine.dispose()
    assert database_unavailable(raised.value) is outage, case


def test_a_server_that_does_not_answer_is_an_outage(server_database_url: str) -> None:
    url = sa.engine.make_url(server_database_url).set(host="127.0.0.1", port=free_port())
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised, engine.connect():
            pass
    finally:
        engine.dispose()
    assert database_unavailable(raised.value)
