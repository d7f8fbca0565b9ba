"""A MySQL 8 stand-in: every statement sent through PyMySQL is checked for MariaDB-only syntax.

No MySQL 8 server runs on our machines, so the MariaDB suite runs through this guard instead:
it sits in PyMySQL's cursor (and aiomysql's), below SQLAlchemy, Django and the raw DB-API path,
and is loaded into the Celery worker subprocesses by tests/mysql8_site/sitecustomize.py (on
PYTHONPATH).
A statement MySQL 8.0 would refuse raises here, and is also appended to the file named by
MYSQL8_GUARD_LOG, which the tests' conftest reads after each test (a worker may swallow the
error and retry).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
from collections.abc import Callable
from types import ModuleType
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
    the tests' own (a shop's Alembic, say) is not refused for what SQLAlchemy alone chose.

    Each patch is applied when its module is first imported: a process that never talks to
    MySQL starts as fast as without the guard (the benchmarks' CPU figures rely on it)."""
    for module, patch in _PATCHES.items():
        if module in sys.modules:
            patch(sys.modules[module])
        else:
            _pending[module] = patch
    if _pending and not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def _guard_cursors(cursors: Any) -> None:
    if getattr(cursors.Cursor, "_mysql8_guarded", False):
        return
    execute, executemany = cursors.Cursor.execute, cursors.Cursor.executemany

    def guarded_execute(self: Any, query: Any, args: Any = None) -> Any:
        check(query)
        return execute(self, query, args)

    def guarded_executemany(self: Any, query: Any, args: Any) -> Any:
        check(query)
        return executemany(self, query, args)

    cursors.Cursor.execute = guarded_execute
    cursors.Cursor.executemany = guarded_executemany
    cursors.Cursor._mysql8_guarded = True


def _guard_async_cursors(cursors: Any) -> None:
    """aiomysql's cursor (the async MariaDB driver of spotler_outbox.asyncio's tests)."""
    if getattr(cursors.Cursor, "_mysql8_guarded", False):
        return
    execute, executemany = cursors.Cursor.execute, cursors.Cursor.executemany

    async def guarded_execute(self: Any, query: Any, args: Any = None) -> Any:
        check(query)
        return await execute(self, query, args)

    async def guarded_executemany(self: Any, query: Any, args: Any) -> Any:
        check(query)
        return await executemany(self, query, args)

    cursors.Cursor.execute = guarded_execute
    cursors.Cursor.executemany = guarded_executemany
    cursors.Cursor._mysql8_guarded = True


def _dialect_as_mysql8(base: Any) -> None:
    dialect = base.MySQLDialect
    if getattr(dialect, "_mysql8_guarded", False):
        return
    initialize = dialect.initialize

    def initialize_as_mysql8(self: Any, connection: Any) -> None:
        initialize(self, connection)
        self.insert_returning = self.delete_returning = self.update_returning = False
        self.supports_sequences = False

    dialect.initialize = initialize_as_mysql8
    dialect._mysql8_guarded = True


_PATCHES: dict[str, Callable[[Any], None]] = {
    "pymysql.cursors": _guard_cursors, "aiomysql.cursors": _guard_async_cursors,
    "sqlalchemy.dialects.mysql.base": _dialect_as_mysql8}
_pending: dict[str, Callable[[Any], None]] = {}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of a module to patch so it patches it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = _pending.pop(name, None)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
