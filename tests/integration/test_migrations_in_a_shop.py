"""`spotler-outbox migrate` in a shop's own database: its tables and Alembic history survive."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from spotler_outbox import migrations
from spotler_outbox.models.database import make_engine
from spotler_outbox.worker.console.cli import main
from tests.conftest import TEST_DB, server_url

SHOP_REVISION = "5a1e0c0ffee1"  # the shop's own Alembic revision id, hand-written
OUR_HEAD = ScriptDirectory(str(migrations.MIGRATIONS_DIR)).get_current_head()


def reset(url: str) -> None:
    """An empty database: the shop's, before anything was installed."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
        else:
            name = engine.url.database
            conn.execute(sa.text(f"DROP DATABASE `{name}`"))
            conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    engine.dispose()


@pytest.fixture(params=("postgresql", "mariadb"))
def shop_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = server_url(request.param, database=f"{TEST_DB}_shop")
    reset(url)
    yield url


def shop_alembic(url: str, directory: Path) -> Config:
    """The shop's own Alembic project: one revision creating its orders table, default
    version table `alembic_version`, as `alembic init` makes it."""
    (directory / "versions").mkdir(parents=True, exist_ok=True)
    (directory / "env.py").write_text(textwrap.dedent("""
        import sqlalchemy as sa
        from alembic import context
        engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
        with engine.connect() as connection:
            context.configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    """))
    (directory / "script.py.mako").write_text("")
    (directory / "versions" / f"{SHOP_REVISION}_orders.py").write_text(textwrap.dedent(f"""
        import sqlalchemy as sa
        from alembic import op
        revision = "{SHOP_REVISION}"
        down_revision = None
        def upgrade():
            op.create_table("shop_orders", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("total", sa.String(20)))
    """))
    config = Config()
    config.set_main_option("script_location", str(directory))
    config.set_main_option("sqlalchemy.url", url)
    return config


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        result = [tuple(r) for r in conn.execute(sa.text(sql))]
    engine.dispose()
    return result


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    return names


def migrate(url: str, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    code = main(["migrate"])
    return code, capsys.readouterr().err


def test_migrate_into_a_shop_with_its_own_alembic_history_leaves_that_history_and_tables(
    shop_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shop = shop_alembic(shop_url, tmp_path / "shop_alembic")
    command.upgrade(shop, "head")
    engine = sa.create_engine(shop_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO shop_orders (id, total) VALUES (1, '19.90')"))
    engine.dispose()

    code, err = migrate(shop_url, monkeypatch, capsys)

    assert (code, err) == (0, "")
    assert rows(shop_url, "SELECT version_num FROM alembic_version") == [(SHOP_REVISION,)]
    assert rows(shop_url, "SELECT id, total FROM shop_orders") == [(1, "19.90")]
    assert rows(shop_url, f"SELECT version_num FROM {migrations.VERSION_TABLE}") == [
        (OUR_HEAD,)]
    assert "outbox_events" in tables(shop_url)
    # The shop's Alembic still runs, and a second migrate of ours is a no-op.
    command.upgrade(shop, "head")
    assert migrate(shop_url, monkeypatch, capsys) == (0, "")


@pytest.mark.parametrize("legacy_at", ["0002", OUR_HEAD])
def test_an_install_that_kept_its_revision_in_alembic_version_moves_over_in_place(
    shop_url: str, legacy_at: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # What the current release leaves: our revision in alembic_version (shared here with a
    # row of the shop's own, which must stay).
    migrations.upgrade(shop_url, legacy_at)
    engine = sa.create_engine(shop_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {migrations.VERSION_TABLE}"))
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL "
                             "PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES (:ours), (:shop)"),
                     {"ours": legacy_at, "shop": SHOP_REVISION})
        conn.execute(sa.text("INSERT INTO outbox_events (orderid, payload) "
                             "VALUES ('kept-1', '{}')"))
    engine.dispose()

    code, err = migrate(shop_url, monkeypatch, capsys)

    # Had it lost its place, revision 0001 would run again and fail on the existing tables.
    assert (code, err) == (0, "")
    assert rows(shop_url, "SELECT version_num FROM alembic_version") == [(SHOP_REVISION,)]
    assert rows(shop_url, f"SELECT version_num FROM {migrations.VERSION_TABLE}") == [
        (OUR_HEAD,)]
    assert rows(shop_url, "SELECT orderid FROM outbox_events") == [("kept-1",)]
    engine = make_engine(shop_url)
    with engine.connect() as conn:  # revision 0003's views: the upgrade ran from legacy_at
        assert "outbox_failures" in sa.inspect(conn).get_view_names()
    engine.dispose()


def test_a_legacy_table_holding_only_our_revision_is_removed_once_moved(
    shop_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    migrations.upgrade(shop_url)
    engine = sa.create_engine(shop_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {migrations.VERSION_TABLE}"))
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                             "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES (:ours)"), {"ours": OUR_HEAD})
    engine.dispose()

    assert migrate(shop_url, monkeypatch, capsys) == (0, "")
    assert "alembic_version" not in tables(shop_url)
    assert rows(shop_url, f"SELECT version_num FROM {migrations.VERSION_TABLE}") == [
        (OUR_HEAD,)]


def test_a_revision_this_release_does_not_know_is_one_line_and_exit_code_2(
    shop_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    migrations.upgrade(shop_url)
    engine = sa.create_engine(shop_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = 'f00d'"))
    engine.dispose()

    code, err = migrate(shop_url, monkeypatch, capsys)

    assert code == 2
    assert err.count("\n") == 1
    assert "f00d" in err
    assert migrations.VERSION_TABLE in err
