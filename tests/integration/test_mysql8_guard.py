"""The MySQL 8 guard stands in for a MySQL 8 server: it must see every process's statements."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    """Outside the guard (which does the same to every engine in the tests), in production:
    SQLAlchemy would otherwise use RETURNING on MariaDB on its own, e.g. in ORM flushes."""
    script = ("import sys\n"
              "from spotler_outbox.models.database import make_engine\n"
              "import sqlalchemy as sa\n"
              "for engine in (make_engine(sys.argv[1]), sa.create_engine(sys.argv[1])):\n"
              "    with engine.connect() as conn:\n"
              "        print(conn.dialect.insert_returning, conn.dialect.delete_returning)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script, server_url("mariadb")], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    # The outbox's engine / a plain engine (the control: MariaDB 10.5+ has RETURNING).
    assert done.stdout.split("\n")[:2] == ["False False", "True True"]


def test_a_mysql_url_without_a_driver_is_one_line_naming_mysql_pymysql(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from spotler_outbox.worker.console.cli import main

    # The Django test shop installs PyMySQL as MySQLdb; a shop without mysqlclient has none.
    monkeypatch.delitem(sys.modules, "MySQLdb", raising=False)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", "mysql://shop:secret@db.example/shop")
    code = main(["migrate"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "mysql+pymysql://" in err
    assert "secret" not in err
