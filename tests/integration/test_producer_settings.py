"""A checkout never fails because of a worker's setting: the order system's process reads only
the producer's settings (from its environment, never a .env), and a malformed worker setting
is reported by the workers and the CLI instead. Every setting is tried, in a loop over the
settings' fields: a setting added later is covered, or the test says what it lacks."""

from __future__ import annotations

import json
import re
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import ProducerSettings, Settings, reset_settings
from tests.conftest import empty_database, purchase
from tests.integration.fixtures import run_cli, statuses
from tests.integration.workers import REDIS_URL, WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
PRODUCER = {f.metadata["env"] for f in fields(ProducerSettings)}
WORKER_ONLY = [f for f in fields(Settings) if f.metadata["env"] not in PRODUCER]
ALL_NAMES = [f.metadata["env"] for f in fields(Settings)]
MISSING_FILE = "/nonexistent/spotler-outbox-secret"


def garbage(f: Field[Any], tmp_path: Path) -> dict[str, str]:
    """Environment variables that make the setting of `f` malformed."""
    name = f.metadata["env"]
    by_name = {
        "OUTBOX_DATABASE_URL": {name: "postgres:/typo"},
        "OUTBOX_BROKER_URL": {name: "127.0.0.1:6379"},
        "SPOTLER_API_URL": {name: "ftp://api.squeezely.tech"},
        "SPOTLER_ACCOUNT": {name + "_FILE": MISSING_FILE},
        "SPOTLER_API_KEY": {name + "_FILE": MISSING_FILE},
        "OUTBOX_LOG_FORMAT": {name: "xml"},
    }
    if name == "SPOTLER_ACCOUNTS_FILE":
        bad = tmp_path / "accounts.json"
        bad.write_text("{not json")
        return {name: str(bad)}
    if name in by_name:
        return by_name[name]
    if isinstance(f.default, bool):
        return {name: "maybe"}
    if isinstance(f.default, int | float):
        return {name: "abc"}
    raise AssertionError(f"{name}: no malformed value known; add one to garbage()")


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ALL_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name + "_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of anyone else's
    reset_settings()
    return monkeypatch


def checkout(url: str, orderid: str) -> None:
    """An order system's checkout: settings from its environment, nothing passed in."""
    engine = make_engine(url)
    try:
        with Session(engine) as session, session.begin():
            enqueue_purchase(session, purchase(orderid))
    finally:
        engine.dispose()


@pytest.mark.parametrize("setting", WORKER_ONLY, ids=lambda f: f.metadata["env"])
def test_a_malformed_worker_setting_never_fails_a_checkout_and_the_cli_reports_it(
    setting: Field[Any], clean_environment: pytest.MonkeyPatch, tmp_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = empty_database("sqlite", tmp_root)
    clean_environment.setenv("OUTBOX_WAKEUP", "false")
    clean_environment.setenv("OUTBOX_DATABASE_URL", url)
    bad = garbage(setting, tmp_path)
    for name, value in bad.items():
        clean_environment.setenv(name, value)
    reset_settings()
    checkout(url, "WS-1")
    engine = make_engine(url)
    assert statuses(engine) == {"WS-1": "pending"}
    engine.dispose()
    reset_settings()
    code, _, err = run_cli(capsys, "status")
    assert code == 2
    assert len(err.splitlines()) == 1 and setting.metadata["env"] in err, err


@pytest.mark.parametrize("setting", fields(ProducerSettings), ids=lambda f: f.metadata["env"])
def test_a_malformed_producer_setting_fails_the_enqueue_with_one_line_naming_it(
    setting: Field[Any], clean_environment: pytest.MonkeyPatch, tmp_root: Path, tmp_path: Path,
) -> None:
    url = empty_database("sqlite", tmp_root)
    if setting.metadata["env"] != "OUTBOX_WAKEUP":
        clean_environment.setenv("OUTBOX_WAKEUP", "false")
    for name, value in garbage(setting, tmp_path).items():
        clean_environment.setenv(name, value)
    reset_settings()
    with pytest.raises(ConfigurationError) as refused:
        checkout(url, "PS-1")
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and setting.metadata["env"] in message, message
    engine = make_engine(url)
    assert statuses(engine) == {}
    engine.dispose()


def test_the_producer_reads_its_settings_from_its_environment(
    clean_environment: pytest.MonkeyPatch, tmp_root: Path,
) -> None:
    url = empty_database("sqlite", tmp_root)
    clean_environment.setenv("OUTBOX_WAKEUP", "false")
    clean_environment.setenv("SPOTLER_HASH_EMAIL", "true")
    clean_environment.setenv("SPOTLER_ACCOUNT", "shop-nl")
    reset_settings()
    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        enqueue_purchase(session, purchase("PE-1"), account="shop-nl")
    with engine.connect() as conn:
        account, payload = conn.execute(sa.text(
            "SELECT account, payload FROM outbox_events")).one()
    engine.dispose()
    assert account == ""  # SPOTLER_ACCOUNT named the default account
    assert "@" not in json.loads(payload)["email"]  # SPOTLER_HASH_EMAIL took effect


def test_a_dotenv_in_the_shops_working_directory_is_not_read_by_the_enqueue(
    clean_environment: pytest.MonkeyPatch, tmp_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shop's own .env is none of the outbox's business: a line our reader refuses, or a
    worker's setting in it, must not reach a checkout; the CLI in that directory reads it."""
    url = empty_database("sqlite", tmp_root)
    (tmp_path / ".env").write_text("OUTBOX_WAKEUP=false\nSPOTLER_MULTI_CURRENCY=maybe\n"
                                   "a line of the shop's own\n")
    clean_environment.setenv("OUTBOX_WAKEUP", "false")
    clean_environment.setenv("OUTBOX_DATABASE_URL", url)
    reset_settings()
    checkout(url, "DE-1")
    engine = make_engine(url)
    assert statuses(engine) == {"DE-1": "pending"}
    engine.dispose()
    code, _, err = run_cli(capsys, "status")
    assert code == 2 and ".env line 3: expected NAME=value" in err


@pytest.mark.parametrize("name, value, message", [
    ("SPOTLER_BATCH_SIZE", "abc", "SPOTLER_BATCH_SIZE: expected a number, got 'abc'"),
    ("OUTBOX_LEASE_SECONDS", "10", "OUTBOX_LEASE_SECONDS: must exceed"),
])
def test_a_worker_started_with_a_malformed_setting_stops_naming_it(
    name: str, value: str, message: str, tmp_root: Path, tmp_path: Path,
) -> None:
    url = empty_database("sqlite", tmp_root)
    env = {"OUTBOX_DATABASE_URL": url, "OUTBOX_BROKER_URL": REDIS_URL, name: value}
    worker = WorkerProcess("bad-setting", {**_plain_environment(), **env}, tmp_path)
    try:
        worker.process.wait(60)
    finally:
        worker.stop()
    assert worker.process.returncode != 0
    assert message in worker.output()


def _plain_environment() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "SPOTLER_"))}


def test_the_readme_lists_exactly_the_order_systems_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"### The order system's environment\n(.*?)\n#", readme, re.DOTALL)
    assert section, "the README lost its list of the order system's settings"
    listed = set(re.findall(r"`((?:OUTBOX|SPOTLER)_[A-Z_]+)`", section.group(1)))
    assert listed == PRODUCER
