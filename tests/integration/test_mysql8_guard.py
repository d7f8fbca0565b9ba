"""The MySQL 8 guard stands in for a MySQL 8 server: it must see every process's statements."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from spotler_outbox.models.database import make_engine
from tests import mysql8_guard
from tests.conftest import server_url

# Hand-labelled: statements MySQL 8.0 refuses, and MariaDB accepts.
MARIADB_ONLY = [
    "INSERT INTO outbox_events (orderid, payload) VALUES (%s, %s) RETURNING id",
    "DELETE FROM outbox_events WHERE id = 1 RETURNING id",
    "CREATE INDEX IF NOT EXISTS ix_a ON t (a)",
    "DROP INDEX IF EXISTS ix_a ON t",
    "ALTER TABLE t ADD COLUMN IF NOT EXISTS a INT",
    "CREATE OR REPLACE TABLE t (a INT)",
    "CREATE SEQUENCE s",
    "SELECT NEXTVAL(s)",
    "SELECT JSON_DETAILED(payload) FROM outbox_events",
    "SELECT id FROM t FOR UPDATE WAIT 5",
    "SET STATEMENT max_statement_time=1 FOR SELECT 1",
    "SELECT id FROM t ORDER BY id FETCH FIRST 1 ROWS ONLY",
    "SELECT a FROM t EXCEPT SELECT a FROM u",
    "SELECT '1'::int",
    "CREATE TABLE t (id UUID)",
]
# ...and statements both accept, some of which look alike.
PORTABLE = [
    "INSERT IGNORE INTO outbox_events (event, orderid, payload) VALUES (%s, %s, %s)",
    "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)",
    "SELECT id FROM t WHERE status = 'pending' LIMIT 10 FOR UPDATE SKIP LOCKED",
    "SELECT id FROM t LOCK IN SHARE MODE",
    "CREATE TABLE IF NOT EXISTS t (a INT)",
    "DROP TABLE IF EXISTS t",
    "CREATE OR REPLACE VIEW v AS SELECT 1",
    "SELECT UUID()",
    "SELECT 'returning customers' AS label",
    "INSERT INTO t (note) VALUES ('a sequence of ::casts')",
]


@pytest.mark.parametrize("sql", MARIADB_ONLY)
def test_the_guard_names_syntax_mysql_8_lacks(sql: str) -> None:
    assert mysql8_guard.mysql8_problems(sql)


@pytest.mark.parametrize("sql", PORTABLE)
def test_the_guard_lets_portable_statements_through(sql: str) -> None:
    assert mysql8_guard.mysql8_problems(sql) == []


def test_a_returning_statement_sent_to_mariadb_fails_in_the_test_process() -> None:
    engine = make_engine(server_url("mariadb"))
    try:
        with engine.connect() as conn, pytest.raises(mysql8_guard.MariaDBOnlySyntax):
            conn.exec_driver_sql("DELETE FROM outbox_events WHERE id = -1 RETURNING id")
    finally:
        engine.dispose()
        # This test sent it on purpose: clear what the guard recorded.
        Path(os.environ[mysql8_guard.LOG_VARIABLE]).unlink(missing_ok=True)


def test_a_process_the_tests_start_runs_under_the_guard_too() -> None:
    """The Celery workers are such processes: they inherit PYTHONPATH from the test run."""
    url = server_url("mariadb")
    script = ("import sys, sqlalchemy as sa\n"
              "e = sa.create_engine(sys.argv[1])\n"
              "with e.connect() as c:\n"
              "    c.exec_driver_sql('SELECT id FROM outbox_events FOR UPDATE WAIT 1')\n")
    done = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True,
                          cwd="/", timeout=60)
    log = Path(os.environ[mysql8_guard.LOG_VARIABLE])
    try:
        assert done.returncode != 0
        assert "MariaDBOnlySyntax" in done.stderr
        assert "FOR UPDATE WAIT" in log.read_text()
    finally:
        log.unlink(missing_ok=True)


def test_on_mariadb_the_outbox_engine_turns_returning_off_as_mysql_8_has_none() -> None:
    # The dialect speaks MySQL 8 on MariaDB: asking it for RETURNING is refused at compile time.
    engine = make_engine(server_url("mariadb"))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            assert not conn.dialect.insert_returning
    finally:
        engine.dispose()
