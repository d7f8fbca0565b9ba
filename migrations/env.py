"""Alembic environment: the URL comes from the config (spotler_outbox.migrations.upgrade),
else from OUTBOX_DATABASE_URL."""

from __future__ import annotations

from alembic import context

from spotler_outbox.migrations import VERSION_TABLE
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import get_settings
from spotler_outbox.models.tables import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            version_table=VERSION_TABLE,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True,
                      version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
