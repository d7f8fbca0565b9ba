"""A MySQL 8 stand-in: every statement sent through PyMySQL is checked for MariaDB-only syntax.

No MySQL 8 server runs on our machines, so the MariaDB suite runs through this guard instead:
it sits in PyMySQL's cursor, below SQLAlchemy, Django and the raw DB-API path, and is loaded
into the Celery worker subprocesses by tests/mysql8_site/sitecustomize.py (on PYTHONPATH).
A statement MySQL 8.0 would refuse raises here, and is also appended to the file named by
MYSQL8_GUARD_LOG, which the tests' conftest reads after each test (a worker may swallow the
error and retry).
"""

from __future__ import annotations

import os
import re
from typing import Any

LOG_VARIABLE = "MYSQL8_GUARD_LOG"

# (what MySQL 8 lacks, a pattern matching it); string literals are blanked out first.
MARIADB_ONLY: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (why, re.compile(pattern, re.IGNORECASE | re.DOTALL)) for why, pattern in (
        ("RETURNING", r"\bRETURNING\b"),
        ("IF [NOT] EXISTS on an index", r"\b(CREATE\s+(UNIQUE\s+)?INDEX|DROP\s+INDEX)\s+IF\b"),
        ("IF [NOT] EXISTS inside ALTER TABLE",
         r"\bALTER\s+TABLE\b.*\b(ADD|DROP|MODIFY|CHANGE)\s+"
         r"(COLUMN\s+|INDEX\s+|KEY\s+|CONSTRAINT\s+|FOREIGN\s+KEY\s+)?IF\b"),
        ("CREATE OR REPLACE other than a view",
         r"\bCREATE\s+OR\s+REPLACE\s+(?!(ALGORITHM\s*=\s*\w+\s+|DEFINER\s*=\s*\S+\s+"
         r"|SQL\s+SECURITY\s+\w+\s+)*VIEW\b)"),
        ("sequences", r"\bSEQUENCE\b|\b(NEXTVAL|LASTVAL|SETVAL)\s*\(|\bNEXT\s+VALUE\s+FOR\b"),
        ("MariaDB-only functions",
         r"\b(JSON_DETAILED|JSON_LOOSE|JSON_COMPACT|JSON_EXISTS|JSON_QUERY|COLUMN_CREATE"
         r"|COLUMN_GET|COLUMN_JSON|SFORMAT|NATURAL_SORT_KEY|DECODE_HISTOGRAM)\s*\("),
        ("FOR UPDATE WAIT n", r"\bFOR\s+UPDATE\s+WAIT\b"),
        ("SET STATEMENT ... FOR", r"\bSET\s+STATEMENT\b"),
        ("FETCH FIRST/NEXT", r"\bFETCH\s+(FIRST|NEXT)\b"),
        ("INTERSECT/EXCEPT (MySQL 8.0.31+)", r"\b(INTERSECT|EXCEPT)\b"),
        ("PostgreSQL casts", r"::"),
        ("MariaDB column types", r"\b(INET4|INET6)\b|\bUUID\b(?!\s*\()"),
        ("KILL QUERY ID", r"\bKILL\s+QUERY\s+ID\b"),
    ))
_LITERALS = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`")


class MariaDBOnlySyntax(AssertionError):
    pass


def mysql8_problems(sql: str) -> list[str]:
    """What in `sql` MySQL 8.0 would refuse (empty when it is fine)."""
    bare = _LITERALS.sub("''", sql)
    return [why for why, pattern in MARIADB_ONLY if pattern.search(bare)]


def check(sql: Any) -> None:
    text = sql.decode(errors="replace") if isinstance(sql, bytes) else str(sql)
    problems = mysql8_problems(text)
    if problems:
        message = f"MySQL 8 lacks {', '.join(problems)}: {' '.join(text.split())[:300]}"
        log = os.environ.get(LOG_VARIABLE)
        if log:
            with open(log, "a") as f:
                f.write(f"[pid {os.getpid()}] {message}\n")
        raise MariaDBOnlySyntax(message)


def install() -> None:
    """Check every statement PyMySQL sends, in this process; and let SQLAlchemy's dialect
    see the MariaDB server as it would see MySQL 8 (no RETURNING, no sequences), so code of
    the tests' own (a shop's Alembic, say) is not refused for what SQLAlchemy alone chose."""
    try:
        from pymysql import cursors
        from sqlalchemy.dialects.mysql.base import MySQLDialect
    except ImportError:
        return
    if getattr(cursors.Cursor, "_mysql8_guarded", False):
        return
    execute, executemany = cursors.Cursor.execute, cursors.Cursor.executemany

    def guarded_execute(self: Any, query: Any, args: Any = None) -> Any:
        check(query)
        return execute(self, query, args)

    def guarded_executemany(self: Any, query: Any, args: Any) -> Any:
        check(query)
        return executemany(self, query, args)

    cursors.Cursor.execute = guarded_execute  # type: ignore[method-assign]
    cursors.Cursor.executemany = guarded_executemany  # type: ignore[method-assign]
    cursors.Cursor._mysql8_guarded = True  # type: ignore[attr-defined]

    initialize = MySQLDialect.initialize

    def initialize_as_mysql8(self: Any, connection: Any) -> None:
        initialize(self, connection)
        self.insert_returning = self.delete_returning = self.update_returning = False
        self.supports_sequences = False

    MySQLDialect.initialize = initialize_as_mysql8  # type: ignore[method-assign]
