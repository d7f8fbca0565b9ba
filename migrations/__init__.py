"""The outbox's Alembic migrations, and the functions that apply them.

Migrations import the models (the tables they create); the models never import migrations.
Their history lives in a table of its own, so a shop's own Alembic history in
`alembic_version`, in the same database, is never read or written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from spotler_outbox.models.database import make_engine, shown_url
from spotler_outbox.models.errors import ConfigurationError

MIGRATIONS_DIR = Path(__file__).parent
VERSION_TABLE = "spotler_outbox_alembic_version"
# Releases before 0.2 kept their revision in Alembic's default table.
LEGACY_VERSION_TABLE = "alembic_version"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic reads "%" as interpolation; a password may hold one.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    config = alembic_config(database_url)
    move_legacy_version(database_url, ScriptDirectory.from_config(config))
    with _one_line_errors(database_url):
        command.upgrade(config, revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    with _one_line_errors(database_url):
        command.downgrade(alembic_config(database_url), revision)


@contextmanager
def _one_line_errors(database_url: str) -> Iterator[None]:
    """Alembic's own errors (an unknown revision: a newer release migrated this database) as
    one line naming the database; database errors pass through to the CLI's handler."""
    try:
        yield
    except CommandError as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigurationError(f"cannot migrate the outbox in {shown_url(database_url)}: "
                                 f"{detail} (history in table {VERSION_TABLE})") from e


def move_legacy_version(database_url: str, script: ScriptDirectory) -> bool:
    """Move our revision from `alembic_version` to our own table; True when one was moved.

    Only rows holding one of our revision ids move, and only when our tables are there: a
    shop's own rows in `alembic_version` stay, and the table is dropped only when nothing of
    the shop's is left in it.
    """
    ours = {revision.revision for revision in script.walk_revisions()}
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if LEGACY_VERSION_TABLE not in tables or "outbox_events" not in tables:
                return False
            legacy = sa.table(LEGACY_VERSION_TABLE, sa.column("version_num", sa.String))
            found = [v for v in conn.execute(sa.select(legacy.c.version_num)).scalars()
                     if v in ours]
            if not found:
                return False
            if len(found) > 1:
                raise ConfigurationError(
                    f"{LEGACY_VERSION_TABLE} in {shown_url(database_url)} holds several "
                    f"outbox revisions ({', '.join(found)}); keep the newest and migrate again")
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            if not context.get_current_heads():
                # A crash after this and before the delete leaves both: the next run finds
                # our table filled and only deletes.
                context.stamp(script, found[0])
            conn.execute(legacy.delete().where(legacy.c.version_num.in_(found)))
            if conn.execute(sa.select(sa.func.count()).select_from(legacy)).scalar() == 0:
                conn.execute(sa.text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))
        return True
    finally:
        engine.dispose()
