"""What a new user meets in the first hour: the commands say what is true, refuse to guess,
and exit as the README says (0 fine, 1 problems found, 2 usage or configuration)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from spotler_outbox.models import control
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.settings import reset_settings
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi, start_fake_api
from tests.conftest import empty_database
from tests.integration.fixtures import run_cli, seed_row
from tests.integration.workers import running_worker, wait_for, worker_environment
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT, KEY, STORE, STORE_KEY = "acct-first", "first-key", "shop-be", "be-key"


def test_migrate_without_outbox_database_url_refuses_naming_it_and_creates_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("OUTBOX_DATABASE_URL", raising=False)
    monkeypatch.delenv("OUTBOX_DATABASE_URL_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    reset_settings()
    code, out, err = run_cli(capsys, "migrate")
    assert code == 2 and not out
    assert len(err.splitlines()) == 1 and "OUTBOX_DATABASE_URL is not set" in err
    assert list(tmp_path.iterdir()) == []  # no ./spotler_outbox.db
    assert run_cli(capsys, "status")[0] == 2  # nor does any other command guess


def test_status_exits_1_for_a_failed_order_or_a_paused_account_and_0_when_all_is_well(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_row(engine, "OK-1")
    code, out, _ = run_cli(capsys, "status")  # no key here: the row waits for one
    assert code == 1 and "PROBLEM: 1 rows of (default) wait for credentials" in out
    monkeypatch.setenv("SPOTLER_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("SPOTLER_API_KEY", KEY)
    reset_settings()
    code, out, _ = run_cli(capsys, "status")
    assert code == 0 and "PROBLEM" not in out
    seed_row(engine, "F-1", status="failed", last_error="rejected")
    code, out, _ = run_cli(capsys, "status")
    assert code == 1 and "PROBLEM: 1 failed orders" in out
    code, out, _ = run_cli(capsys, "status", "--json")
    assert code == 1 and json.loads(out)["problems"][0].startswith("1 failed orders")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM outbox_events WHERE orderid = 'F-1'"))
        control.pause(conn, reason="Spotler refused the credentials (HTTP 401)", now=utc_now(),
                      check_at=utc_now())
    code, out, _ = run_cli(capsys, "status")
    assert code == 1 and "is paused: Spotler refused the credentials" in out


@pytest.fixture
def two_accounts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RunningFakeApi]:
    """A fake API serving the default account and a store; the default key configured here
    is wrong, the store's right: which check passes tells whose key was asked about."""
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({STORE: STORE_KEY}))
    with start_fake_api(account=ACCOUNT, api_key=KEY,
                        accounts={ACCOUNT: KEY, STORE: STORE_KEY}) as running:
        monkeypatch.setenv("SPOTLER_API_URL", running.url)
        monkeypatch.setenv("SPOTLER_ACCOUNT", ACCOUNT)
        monkeypatch.setenv("SPOTLER_API_KEY", "not-the-default-key")
        monkeypatch.setenv("SPOTLER_ACCOUNTS_FILE", str(accounts))
        reset_settings()
        yield running
    reset_settings()


def test_check_verifies_the_default_account_or_the_one_named_as_its_help_says(
    two_accounts: RunningFakeApi, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "check", "--help")
    help_text = " ".join(out.split())
    assert "default: the default account (SPOTLER_ACCOUNT)" in help_text
    assert "every account" not in help_text
    code, out, _ = run_cli(capsys, "check")
    assert code == 1 and f"account {ACCOUNT}" in out
    assert "verifyAuth: FAILED, Spotler answered HTTP 401" in out
    code, out, _ = run_cli(capsys, "check", "--account", STORE)
    assert code == 0 and f"account {STORE}" in out and "verifyAuth: OK" in out


def test_check_against_an_unreachable_host_says_no_http_answer_came(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SPOTLER_API_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SPOTLER_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("SPOTLER_API_KEY", KEY)
    monkeypatch.setenv("SPOTLER_CONNECT_TIMEOUT", "1")
    reset_settings()
    code, out, _ = run_cli(capsys, "check")
    assert code == 1
    assert "verifyAuth: FAILED, no HTTP answer from Spotler: " in out
    assert "Spotler answered no" not in out


def test_purge_help_says_it_keeps_the_orderids(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "purge", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "empty the payloads of orders delivered before a date, keeping each one's orderid" \
        in text
    assert "delete old delivered orders" not in text


def test_the_readme_starts_the_worker_as_the_systemd_unit_does_one_line_per_batch_included(
) -> None:
    readme = (ROOT / "README.md").read_text()
    printed = re.search(r"`(celery -A spotler_outbox\.worker worker [^`]*)`", readme)
    assert printed, "the README lost its worker command"
    unit = (ROOT / "ops" / "systemd" / "spotler-outbox-worker.service").read_text()
    exec_start = re.search(r"^ExecStart=\S+/(celery .*)$", unit, re.MULTILINE)
    assert exec_start

    def options(command: str) -> set[str]:
        words = shlex.split(command)
        spelled = {"-l": "--loglevel"}
        found = set()
        for i, word in enumerate(words):
            if word.startswith("-") and word not in ("-A",):
                name, _, value = word.partition("=")
                if not value and name in spelled:
                    name, value = spelled[name], words[i + 1]
                found.add(f"{name}={value.lower()}")
        return found

    assert options(printed.group(1)) == options(exec_start.group(1))
    assert "--loglevel=info" in options(printed.group(1))


def test_a_worker_with_a_mistyped_database_says_nothing_is_delivered_not_that_the_sweeper_is(
    tmp_root: Path, tmp_path: Path, api: RunningFakeApi, broker: object,
) -> None:
    url = empty_database("postgresql", tmp_root)
    typo = make_url(url).set(database="spotler_outbox_no_such_database")
    env = worker_environment(typo.render_as_string(hide_password=False), api.url)
    with running_worker("typo", env, tmp_path) as worker:
        wait_for(lambda: "cannot reach the outbox database" in worker.output(), 20,
                 "the listener's complaint")
        log = worker.output()
    assert 'database "spotler_outbox_no_such_database" does not exist' in log
    assert "nothing is delivered until it answers" in log
    assert "the sweeper delivers meanwhile" not in log
    assert "the sweeper finds new rows meanwhile" not in log
