"""The schema is built by Alembic, round-trips, and matches the models exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from spotler_outbox import migrations
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.tables import Base
from tests.conftest import BACKENDS, TEST_DB, backend_url


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_downgrade_upgrade_leaves_a_schema_identical_to_the_models(
    backend: str, tmp_root: Path
) -> None:
    url = backend_url(backend, tmp_root, database=f"{TEST_DB}_migrations")
    migrations.downgrade(url, "base")
    migrations.upgrade(url)
    migrations.downgrade(url, "base")
    engine = make_engine(url)
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) <= {"spotler_outbox_alembic_version"}
    migrations.upgrade(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": migrations.VERSION_TABLE})
        diff = compare_metadata(context, Base.metadata)
        assert diff == []
        assert conn.execute(sa.text("SELECT count(*) FROM dispatch_control")).scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_every_partial_index_of_the_models_is_partial_in_the_migrated_schema_and_no_other(
    backend: str, tmp_root: Path
) -> None:
    """Alembic's comparison above ignores an index's WHERE: this checks it."""
    url = backend_url(backend, tmp_root, database=f"{TEST_DB}_migrations")
    migrations.upgrade(url)
    engine = make_engine(url)
    read = ("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            if backend == "postgresql" else
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    with engine.connect() as conn:
        built = {name: sql for name, sql in conn.execute(sa.text(read))}
    engine.dispose()
    expected = {index.name: index.dialect_options[backend]["where"] is not None
                for table in Base.metadata.tables.values() for index in table.indexes}
    assert {name: " WHERE " in built[name].upper() for name in expected} == expected
