"""The operator's commands per account, in-process on each database: --account, an orderid
that two stores share, and import with an account column."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox.models.enqueue import enqueue_purchase
from spotler_outbox.models.settings import Settings, reset_settings
from spotler_outbox.models.tables import events
from spotler_outbox.worker.fake_spotler.server import start_fake_api
from tests.conftest import purchase
from tests.integration.fixtures import run_cli

DEFAULT = "shop-nl"


@pytest.fixture
def cli_env(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The shared CLI set-up, with a default account named."""
    monkeypatch.setenv("SPOTLER_ACCOUNT", DEFAULT)
    reset_settings()
    yield cli_env
    reset_settings()



def seed(engine: Engine, account: str | None, *orderids: str, **values: Any) -> None:
    settings = Settings(database_url=str(engine.url), account=DEFAULT, wakeup_enabled=False)
    with Session(engine) as session, session.begin():
        for orderid in orderids:
            enqueue_purchase(session, purchase(orderid), account=account, settings=settings)
    if values:
        with engine.begin() as conn:
            conn.execute(events.update().where(events.c.orderid.in_(orderids),
                                               events.c.account == (account or ""))
                         .values(values))


def state(engine: Engine) -> set[tuple[str, str, str]]:
    with engine.connect() as conn:
        return {(r.account, r.orderid, r.status) for r in conn.execute(sa.select(events))}


def test_show_of_an_orderid_two_stores_share_asks_for_the_account(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, None, "7")
    seed(engine, "shop-be", "7", status="failed", last_error="rejected")
    code, _, err = run_cli(capsys, "show", "7")
    assert code == 2 and "name one with --account" in err
    code, out, _ = run_cli(capsys, "show", "7", "--account", "shop-be")
    assert code == 0 and "account       shop-be" in out and "failed" in out
    code, out, _ = run_cli(capsys, "show", "7", "--account", DEFAULT)  # the default, by its name
    assert code == 0 and "pending" in out
    code, _, err = run_cli(capsys, "show", "7", "--account", "shop-de")
    assert code == 3 and "of account 'shop-de'" in err


def test_list_status_retry_and_purge_keep_to_the_account_given(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    for account in (None, "shop-be"):
        seed(engine, account, "F-1", status="failed", last_error="rejected")
        seed(engine, account, "D-1", status="delivered", delivered_at=old)
    code, out, _ = run_cli(capsys, "list", "--account", "shop-be")
    assert code == 0 and out.count("shop-be") == 2 and "(default)" not in out
    code, out, _ = run_cli(capsys, "status")
    assert "shop-be" in out and f"{DEFAULT} (default)" in out

    assert run_cli(capsys, "retry", "F-1", "--account", "shop-be")[0] == 0
    assert run_cli(capsys, "purge", "--delivered-before", "30d", "--account", "shop-be")[0] == 0
    assert state(engine) == {("", "F-1", "failed"), ("", "D-1", "delivered"),
                             ("shop-be", "F-1", "pending"), ("shop-be", "D-1", "delivered")}
    with engine.connect() as conn:  # purge compacts (retention): only shop-be's row
        purged = conn.execute(sa.select(events.c.account).where(events.c.purged_at.is_not(None)))
        assert [r.account for r in purged] == ["shop-be"]
    assert run_cli(capsys, "retry", "--all-failed", "--yes", "--account", DEFAULT)[0] == 0
    assert ("", "F-1", "pending") in state(engine)


def test_resend_of_a_shared_orderid_resends_only_the_account_named(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    now = dt.datetime.now(dt.UTC)
    seed(engine, None, "R-1", status="delivered", delivered_at=now)
    seed(engine, "shop-be", "R-1", status="delivered", delivered_at=now)
    assert run_cli(capsys, "resend", "R-1", "--yes", "--account", "shop-be")[0] == 0
    assert state(engine) == {("", "R-1", "delivered"), ("shop-be", "R-1", "pending")}


def test_import_puts_each_order_in_the_account_of_its_column(
    cli_env: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "account,orderid,email,product_id,quantity\n"
        "shop-be,1,ann@example.com,SKU-1,1\n"
        ",1,bob@example.com,SKU-2,1\n"
        "shop-be,1,ann@example.com,SKU-3,2\n"
        "shop-nl,2,cy@example.com,SKU-4,1\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "import", str(path))
    assert (code, out.splitlines()[0]) == (0, "enqueued 3, already present 0, refused 0")
    assert state(engine) == {("shop-be", "1", "pending"), ("", "1", "pending"),
                             ("", "2", "pending")}
    lines = tmp_path / "orders.jsonl"
    lines.write_text('{"account": "shop-be", "event": "Purchase", "email": "a@example.com", '
                     '"orderid": "2", "products": [{"id": "S", "quantity": 1}]}\n'
                     '{"account": 5, "event": "Purchase", "email": "a@example.com", '
                     '"orderid": "3", "products": [{"id": "S", "quantity": 1}]}\n')
    code, out, _ = run_cli(capsys, "import", str(lines))
    assert code == 1 and "line 2: account: must be a string" in out
    assert ("shop-be", "2", "pending") in state(engine)


def test_check_of_an_account_uses_its_key_from_the_accounts_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text('{"shop-be": "be-check-key"}')
    with start_fake_api(accounts={"shop-be": "be-check-key"}) as fake:
        for name, value in (("SPOTLER_API_URL", fake.url), ("SPOTLER_ACCOUNT", ""),
                            ("SPOTLER_ACCOUNTS_FILE", str(accounts))):
            monkeypatch.setenv(name, value)
        reset_settings()
        code, out, err = run_cli(capsys, "check", "--account", "shop-be")
        assert code == 0 and "account shop-be" in out and "verifyAuth: OK" in out
        assert "be-check-key" not in out + err
        code, _, err = run_cli(capsys, "check", "--account", "shop-de")
        assert code == 2 and "'shop-de' has no credentials" in err
