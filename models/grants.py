"""Least privilege in the shop's database: what the order system, the workers and an operator
may do, as SQL for the dialect (`spotler-outbox grants` prints it).

The migrations need DDL; nothing else does. Each role gets exactly the statements its code
runs on the outbox tables and nothing on any other table:
- producer (the order system): insert a row, and read it back (a duplicate orderid returns the
  existing row; PostgreSQL's RETURNING needs SELECT);
- worker (Celery workers and the metrics exporter): claim and settle rows, record attempts,
  share the pause and rate-limit row and the timers' turns, read the operator views; run
  retention (empty old rows, never delete one; delete the attempts left without rows);
- operator (the `spotler-outbox` command): all of that plus import, retry, resend and purge.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from spotler_outbox.models.errors import UsageError
from spotler_outbox.models.tables import MYSQL_FAMILY

VIEWS = ("outbox_status_summary", "outbox_failures")
_READ_VIEWS = {view: ("SELECT",) for view in VIEWS}
_ALL_DML = ("SELECT", "INSERT", "UPDATE", "DELETE")

# Table (or view) -> privileges. Read from the statements in models/ (claims, control,
# enqueue, operations, retention, erasure): a new statement on another table needs a line
# here, and the e2e tests that run the workers under these roles fail until it has one.
PRIVILEGES: dict[str, dict[str, tuple[str, ...]]] = {
    "producer": {"outbox_events": ("SELECT", "INSERT")},
    "worker": {
        "outbox_events": ("SELECT", "UPDATE"),
        # DELETE: retention drops the attempts of the rows it empties (models.retention).
        "delivery_attempts": ("SELECT", "INSERT", "DELETE"),
        "delivery_attempt_events": ("SELECT", "INSERT", "DELETE"),
        "dispatch_control": ("SELECT", "INSERT", "UPDATE"),
        **_READ_VIEWS,
    },
    "operator": {
        "outbox_events": _ALL_DML,
        "delivery_attempts": _ALL_DML,
        "delivery_attempt_events": _ALL_DML,
        "dispatch_control": _ALL_DML,
        **_READ_VIEWS,
    },
}
# PostgreSQL's serial ids: inserting a row draws from its table's sequence.
SEQUENCES = {
    "producer": ("outbox_events_id_seq",),
    "worker": ("delivery_attempts_id_seq",),
    "operator": ("outbox_events_id_seq", "delivery_attempts_id_seq"),
}
ROLES = tuple(PRIVILEGES)
DEFAULT_NAMES = {role: f"spotler_outbox_{role}" for role in ROLES}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Login:
    role: str
    name: str
    password: str


def logins(names: dict[str, str]) -> list[Login]:
    """One login per role, with a fresh random password (letters, digits, - and _ only)."""
    for role, name in names.items():
        if not _NAME.match(name):
            raise UsageError(f"--{role}: {name!r} is not a plain SQL name "
                             "(letters, digits and _, at most 63)")
    return [Login(role, names[role], secrets.token_urlsafe(18)) for role in ROLES]


def grant_statements(dialect: str, database: str, users: list[Login], *,
                     schema: str = "public", host: str = "%") -> list[str]:
    """The statements, one per line, for PostgreSQL or the MySQL family (MariaDB, MySQL 8)."""
    if dialect == "postgresql":
        return _postgresql(database, users, schema)
    if dialect in MYSQL_FAMILY:
        return _mysql(database, users, host)
    raise UsageError(f"grants: {dialect} has no users or privileges; protect the database "
                     "file with file permissions instead")


def _postgresql(database: str, users: list[Login], schema: str) -> list[str]:
    out = []
    for user in users:
        who = f'"{user.name}"'
        # No CREATE ROLE IF NOT EXISTS in PostgreSQL; an existing role keeps its password.
        out.append(f"DO $$ BEGIN CREATE ROLE {who} LOGIN PASSWORD '{user.password}'; "
                   "EXCEPTION WHEN duplicate_object THEN NULL; END $$;")
        out.append(f'GRANT CONNECT ON DATABASE "{database}" TO {who};')
        out.append(f'GRANT USAGE ON SCHEMA "{schema}" TO {who};')
        for table, privileges in PRIVILEGES[user.role].items():
            out.append(f'GRANT {", ".join(privileges)} ON "{schema}".{table} TO {who};')
        for sequence in SEQUENCES[user.role]:
            out.append(f'GRANT USAGE ON SEQUENCE "{schema}".{sequence} TO {who};')
    return out


def _mysql(database: str, users: list[Login], host: str) -> list[str]:
    out = []
    for user in users:
        who = f"'{user.name}'@'{host}'"
        # IF NOT EXISTS: MariaDB 10.1+ and MySQL 5.7+; an existing user keeps its password.
        out.append(f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY '{user.password}';")
        for table, privileges in PRIVILEGES[user.role].items():
            out.append(f"GRANT {', '.join(privileges)} ON `{database}`.`{table}` TO {who};")
    return out


def grants_script(dialect: str, database: str, users: list[Login], *,
                  schema: str = "public", host: str = "%") -> str:
    """What the command prints: a header saying how to run it, then the statements."""
    header = [
        f"-- spotler-outbox least-privilege roles for database {database} ({dialect}).",
        "-- Run as the user that ran `spotler-outbox migrate` (it owns the outbox tables).",
        "-- The passwords below were generated for this output; a user that already exists",
        "-- keeps its own. Put each in the OUTBOX_DATABASE_URL of what runs as that user:",
        *(f"--   {u.role}: {u.name}" for u in users),
        "-- To let the shop's own database user enqueue, run the producer's GRANT lines with",
        "-- its name instead (`--producer shopuser`).",
    ]
    body = grant_statements(dialect, database, users, schema=schema, host=host)
    return "\n".join(header + body) + "\n"
