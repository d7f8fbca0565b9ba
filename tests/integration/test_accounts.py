"""Several Spotler accounts in one outbox, in-process against the fake API on each database:
batches never mix accounts, and a pause, a hold or missing credentials stay in their account."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase
from spotler_outbox.models import control
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import Settings, reset_settings
from spotler_outbox.models.tables import events
from spotler_outbox.worker.console import exporter
from spotler_outbox.worker.console.cli import main
from spotler_outbox.worker.dispatch import Dispatcher
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi, start_fake_api
from tests.conftest import purchase
from tests.integration.fixtures import ACCOUNT, API_KEY, delivery_settings

BE, BE_KEY = "shop-be", "be-key-do-not-log-91c2"
DE, DE_KEY = "shop-de", "de-key-do-not-log-5e7a"
STORE = "custom_store"  # the test events name their account: the fake checks the headers by it


@pytest.fixture(scope="module")
def fake_api() -> Iterator[RunningFakeApi]:
    with start_fake_api(accounts={ACCOUNT: API_KEY, BE: BE_KEY, DE: DE_KEY},
                        account_field=STORE) as api:
        yield api


@pytest.fixture
def api(fake_api: RunningFakeApi) -> RunningFakeApi:
    fake_api.state.reset()
    fake_api.state.set_accounts({ACCOUNT: API_KEY, BE: BE_KEY, DE: DE_KEY})
    return fake_api


def write_accounts(path: Path, keys: dict[str, str]) -> str:
    path.write_text(json.dumps(keys))
    return str(path)


def settings_for(database_url: str, api: RunningFakeApi, tmp_path: Path,
                 **overrides: object) -> Settings:
    accounts = write_accounts(tmp_path / "accounts.json", {BE: BE_KEY})
    return delivery_settings(database_url, api.url, accounts_file=accounts, **overrides)


def enqueue(engine: Engine, settings: Settings, account: str | None, orderids: list[str]) -> None:
    header = account or ACCOUNT
    with Session(engine) as session, session.begin():
        for orderid in orderids:
            enqueue_purchase(session, purchase(orderid, **{STORE: header}), account=account,
                             settings=settings)


def rows(engine: Engine, account: str) -> list[sa.Row[tuple[object, ...]]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(events).where(events.c.account == account)
                                 .order_by(events.c.id)))


def by_account(api: RunningFakeApi) -> dict[str, dict[str, int]]:
    got = api.state.received_by_account()
    assert got["misdirected_events"] == 0
    return dict(got["accounts"])


def test_the_same_orderid_in_two_accounts_is_two_orders_and_once_per_account(
    engine: Engine, database_url: str
) -> None:
    settings = Settings(database_url=database_url, account=ACCOUNT, wakeup_enabled=False)
    with Session(engine) as session, session.begin():
        first = enqueue_purchase(session, purchase("100"), settings=settings)
        named = enqueue_purchase(session, purchase("100"), account=ACCOUNT, settings=settings)
        other = enqueue_purchase(session, purchase("100"), account=BE, settings=settings)
        again = enqueue_purchase(session, purchase("100"), account=BE, settings=settings)
    assert first.created and other.created
    assert not named.created and named.id == first.id  # the default account, by its name
    assert not again.created and again.id == other.id
    with engine.connect() as conn:
        stored = conn.execute(sa.select(events.c.account, events.c.orderid)).all()
    assert sorted(stored) == [("", "100"), (BE, "100")]


def test_batches_never_mix_accounts_and_each_carries_its_own_key(
    engine: Engine, database_url: str, api: RunningFakeApi, tmp_path: Path
) -> None:
    settings = settings_for(database_url, api, tmp_path, batch_size=50)
    orderids = [str(1000 + i) for i in range(40)]  # the same numbers in both stores
    enqueue(engine, settings, None, orderids)
    enqueue(engine, settings, BE, orderids)
    dispatcher = Dispatcher(make_engine(database_url), None, settings)
    report = dispatcher.run()
    assert report.delivered == 80
    assert by_account(api) == {ACCOUNT: dict.fromkeys(orderids, 1), BE: dict.fromkeys(orderids, 1)}
    log = api.state.request_log()
    assert len(log) == 2 and {e["account"] for e in log} == {ACCOUNT, BE}
    assert all(e["status"] == 200 and e["events"] == 40 for e in log)


def test_a_refused_key_pauses_only_its_account_and_its_recheck_resumes_it(
    engine: Engine, database_url: str, api: RunningFakeApi, tmp_path: Path
) -> None:
    settings = settings_for(database_url, api, tmp_path, batch_size=10)
    enqueue(engine, settings, None, [f"NL-{i}" for i in range(30)])
    enqueue(engine, settings, BE, [f"BE-{i}" for i in range(30)])
    api.state.set_account_key(BE, "rotated-at-spotler")  # our key for shop-be is now wrong
    dispatcher = Dispatcher(make_engine(database_url), None, settings)
    dispatcher.run()
    dispatcher.run()
    with engine.connect() as conn:
        controls = control.read_controls(conn)
    assert controls[BE].paused and not controls.get("", control.NO_CONTROL).paused
    assert {r.status for r in rows(engine, "")} == {"delivered"}
    assert {(r.status, r.attempts) for r in rows(engine, BE)} == {("pending", 0)}
    assert dispatcher.recheck_credentials() in (None, False)

    api.state.set_account_key(BE, BE_KEY)  # the key works again
    time.sleep(settings.auth_recheck_interval)
    assert dispatcher.recheck_credentials() is True
    dispatcher.run()
    assert {(r.status, r.attempts) for r in rows(engine, BE)} == {("delivered", 1)}
    assert by_account(api)[BE] == {f"BE-{i}": 1 for i in range(30)}
    with engine.connect() as conn:
        stored = [str(r) for table in ("outbox_events", "delivery_attempts", "dispatch_control")
                  for r in conn.execute(sa.text(f"SELECT * FROM {table}"))]
    assert not [r for r in stored if BE_KEY in r or API_KEY in r]


def test_a_429_holds_only_its_account(
    engine: Engine, database_url: str, api: RunningFakeApi, tmp_path: Path
) -> None:
    settings = settings_for(database_url, api, tmp_path, batch_size=10)
    enqueue(engine, settings, None, [f"NL-{i}" for i in range(20)])
    enqueue(engine, settings, BE, [f"BE-{i}" for i in range(20)])
    api.state.set_faults(Faults(rate_limit_seconds=30, only_accounts=[BE]))
    dispatcher = Dispatcher(make_engine(database_url), None, settings)
    for _ in range(3):
        dispatcher.run()
    with engine.connect() as conn:
        controls = control.read_controls(conn)
    now = dt.datetime.now(dt.UTC)
    assert controls[BE].rate_limited(now)
    assert not controls.get("", control.NO_CONTROL).rate_limited(now)
    assert {r.status for r in rows(engine, "")} == {"delivered"}
    assert {(r.status, r.attempts) for r in rows(engine, BE)} == {("pending", 0)}
    assert [e["account"] for e in api.state.request_log() if e["status"] == 429] == [BE]


def test_a_paused_accounts_due_rows_are_never_claimed_so_they_cannot_starve_the_others(
    engine: Engine, database_url: str, api: RunningFakeApi, tmp_path: Path
) -> None:
    settings = settings_for(database_url, api, tmp_path, batch_size=10)
    enqueue(engine, settings, BE, [f"BE-{i}" for i in range(200)])  # older, and many more
    enqueue(engine, settings, None, [f"NL-{i}" for i in range(15)])
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        control.pause(conn, reason="HTTP 401", now=now, check_at=now + dt.timedelta(hours=1),
                      account=BE)
    before = [(r.id, r.updated_at, r.attempts, r.last_error) for r in rows(engine, BE)]
    report = Dispatcher(make_engine(database_url), None, settings).run()
    assert report.delivered == 15 and report.released == 0
    # Not one of the paused account's rows was touched: no claim and hand back.
    assert [(r.id, r.updated_at, r.attempts, r.last_error) for r in rows(engine, BE)] == before
    assert BE not in by_account(api)


def test_rows_of_an_account_without_credentials_wait_visibly_and_go_once_it_has_them(
    engine: Engine, database_url: str, api: RunningFakeApi, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(database_url, api, tmp_path)
    enqueue(engine, settings, DE, ["DE-1", "DE-2"])
    enqueue(engine, settings, None, ["NL-1"])
    dispatcher = Dispatcher(make_engine(database_url), None, settings)
    dispatcher.run()
    assert {(r.status, r.attempts) for r in rows(engine, DE)} == {("pending", 0)}
    for name, value in (("OUTBOX_DATABASE_URL", database_url), ("SPOTLER_ACCOUNT", ACCOUNT),
                        ("SPOTLER_API_KEY", API_KEY),
                        ("SPOTLER_ACCOUNTS_FILE", settings.accounts_file)):
        monkeypatch.setenv(name, value)
    reset_settings()
    assert main(["status"]) == 1  # rows waiting for credentials are a problem found
    out = capsys.readouterr().out
    assert "shop-de" in out and "NO CREDENTIALS: 2 rows wait for them" in out
    assert main(["status", "--json", "--account", DE]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["counts"]["pending"] == 2 and shown["accounts"][0]["credentials"] is False

    write_accounts(Path(settings.accounts_file), {BE: BE_KEY, DE: DE_KEY})
    dispatcher.run()  # the same worker reads the changed file: no restart
    assert {(r.status, r.attempts) for r in rows(engine, DE)} == {("delivered", 1)}
    assert by_account(api)[DE] == {"DE-1": 1, "DE-2": 1}


def test_request_slots_of_an_account_are_spaced_by_the_budget_whoever_takes_them(
    engine: Engine,
) -> None:
    t0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
    with engine.begin() as conn:
        assert control.take_request_slot(conn, account=BE, now=t0, interval=0.25) is None
        # A second worker at the same instant: not before the slot frees up.
        assert control.take_request_slot(conn, account=BE, now=t0, interval=0.25) == \
            t0 + dt.timedelta(seconds=0.25)
        # Another account has its own budget.
        assert control.take_request_slot(conn, account="", now=t0, interval=0.25) is None
        later = t0 + dt.timedelta(seconds=0.25)
        assert control.take_request_slot(conn, account=BE, now=later, interval=0.25) is None


def test_metrics_and_the_summary_view_show_each_accounts_rows_pause_and_missing_credentials(
    engine: Engine, database_url: str, api: RunningFakeApi, tmp_path: Path
) -> None:
    settings = settings_for(database_url, api, tmp_path, account=ACCOUNT)
    enqueue(engine, settings, None, ["NL-1"])
    enqueue(engine, settings, BE, ["BE-1", "BE-2"])
    enqueue(engine, settings, DE, ["DE-1"])
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        control.pause(conn, reason="HTTP 401", now=now, check_at=now, account=BE)
    server, thread = exporter.start_exporter(engine, "127.0.0.1", 0, settings)
    try:
        text = requests.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("spotler_outbox_account_rows", account=ACCOUNT, status="pending") == 1
    assert value("spotler_outbox_account_rows", account=BE, status="pending") == 2
    assert value("spotler_outbox_account_paused", account=BE) == 1
    assert value("spotler_outbox_account_paused", account=ACCOUNT) == 0
    assert value("spotler_outbox_paused") == 1
    assert value("spotler_outbox_account_without_credentials", account=DE) == 1
    assert value("spotler_outbox_account_without_credentials", account=BE) == 0
    with engine.connect() as conn:
        summary = {(r.account, r.status): int(r.row_count) for r in conn.execute(sa.text(
            "SELECT account, status, row_count FROM outbox_status_summary"))}
    assert summary == {(a, s): n for a, counts in (("", (1,)), (BE, (2,)), (DE, (1,)))
                       for s, n in zip(("pending", "in_flight", "delivered", "failed"),
                                       (*counts, 0, 0, 0), strict=True)}


def test_plain_sql_rows_with_or_without_an_account_go_to_that_account_or_the_default(
    engine: Engine, database_url: str, api: RunningFakeApi, tmp_path: Path
) -> None:
    settings = settings_for(database_url, api, tmp_path)
    with engine.begin() as conn:
        for account, orderid in ((None, "SQL-1"), (ACCOUNT, "SQL-2"), (BE, "SQL-1")):
            payload = json.dumps(purchase(orderid, **{STORE: account or ACCOUNT}))
            columns = "event, orderid, payload" + (", account" if account else "")
            values = "'Purchase', :o, :p" + (", :a" if account else "")
            conn.execute(sa.text(f"INSERT INTO outbox_events ({columns}) VALUES ({values})"),
                         {"o": orderid, "p": payload, "a": account})
    Dispatcher(make_engine(database_url), None, settings).run()
    # The default account spelled out by name is sent with the default key, not left waiting.
    assert by_account(api) == {ACCOUNT: {"SQL-1": 1, "SQL-2": 1}, BE: {"SQL-1": 1}}


def test_the_failures_view_names_each_failed_orders_account(
    engine: Engine, database_url: str
) -> None:
    settings = Settings(database_url=database_url, account=ACCOUNT, wakeup_enabled=False)
    enqueue(engine, settings, None, ["F-1"])
    enqueue(engine, settings, BE, ["F-1"])
    with engine.begin() as conn:
        conn.execute(events.update().values(status="failed", last_error="rejected"))
        shown = conn.execute(sa.text("SELECT account, orderid FROM outbox_failures")).all()
    assert sorted(shown) == [("", "F-1"), (BE, "F-1")]


def test_the_db_api_helper_takes_the_account_too(engine: Engine, database_url: str) -> None:
    from spotler_outbox import dbapi

    settings = Settings(database_url=database_url, account=ACCOUNT, wakeup_enabled=False)
    own = make_engine(database_url)
    pooled = own.raw_connection()
    raw = pooled.driver_connection  # the driver's own connection, as a shop holds it
    try:
        first = dbapi.enqueue_purchase(raw, purchase("DB-1"), account=BE, settings=settings)
        again = dbapi.enqueue_purchase(raw, purchase("DB-1"), account=BE, settings=settings)
        default = dbapi.enqueue_purchase(raw, purchase("DB-1"), settings=settings)
        raw.commit()
    finally:
        pooled.close()
        own.dispose()
    assert first.created and not again.created and again.id == first.id and default.created
    assert [r.orderid for r in rows(engine, BE)] == ["DB-1"]
    assert [r.orderid for r in rows(engine, "")] == ["DB-1"]


def test_a_429_to_one_accounts_request_leaves_the_other_accounts_batch_claimed_ahead_to_go(
    engine: Engine, database_url: str, api: RunningFakeApi, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(database_url, api, tmp_path, batch_size=3)
    enqueue(engine, settings, None, [f"NL-{i}" for i in range(3)])
    enqueue(engine, settings, BE, [f"BE-{i}" for i in range(3)])
    api.state.set_faults(Faults(rate_limit_seconds=30, latency_ms=300, only_accounts=[BE]))
    dispatcher = Dispatcher(make_engine(database_url), None, settings)
    pick = dispatcher.gate.claim_order
    # BE's batch first, so the default account's is the one claimed during BE's request.
    monkeypatch.setattr(dispatcher.gate, "claim_order", lambda: sorted(
        pick(), key=lambda account: account != BE))
    report = dispatcher.run()
    assert report.released == 3  # BE's own rows, by the hold; none of the default account
    assert {r.status for r in rows(engine, "")} == {"delivered"}
    assert {(r.status, r.attempts) for r in rows(engine, BE)} == {("pending", 0)}
    assert [(e["account"], e["status"]) for e in api.state.request_log()] == [
        (BE, 429), (ACCOUNT, 200)]


def test_a_429_holds_its_account_and_only_it_whichever_account_a_worker_claims_first(
    engine: Engine, database_url: str, api: RunningFakeApi, tmp_path: Path
) -> None:
    # Held first, with rows left, before the other account has any: no claim order can let
    # the other account's batch slip through before the hold, nor the held one's after it.
    settings = settings_for(database_url, api, tmp_path, batch_size=10)
    enqueue(engine, settings, BE, [f"BE-{i}" for i in range(20)])
    api.state.set_faults(Faults(rate_limit_seconds=30, only_accounts=[BE]))
    dispatcher = Dispatcher(make_engine(database_url), None, settings)
    assert dispatcher.run().rate_limited
    enqueue(engine, settings, None, [f"NL-{i}" for i in range(20)])
    report = dispatcher.run()
    assert report.delivered == 20
    assert by_account(api) == {ACCOUNT: {f"NL-{i}": 1 for i in range(20)}}
    assert {(r.status, r.attempts) for r in rows(engine, BE)} == {("pending", 0)}
    assert [e["account"] for e in api.state.request_log() if e["status"] == 429] == [BE]
