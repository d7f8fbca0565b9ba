"""The spotler-outbox command, run in-process against each of the three databases."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox.models import claims, control, tables
from spotler_outbox.models.claims import AttemptRecord, ClaimedRow
from spotler_outbox.models.enqueue import enqueue_purchase
from spotler_outbox.models.settings import Settings, reset_settings
from spotler_outbox.models.tables import Status
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi, start_fake_api
from tests.conftest import purchase
from tests.integration.fixtures import run_cli

events = tables.events
ACCOUNT, API_KEY = "acct-cli", "cli-key-that-must-never-show"


def seed(engine: Engine, *orderids: str, **values: Any) -> None:
    """Enqueue the orders, then set column values directly, as a worker would have."""
    settings = Settings(database_url=str(engine.url), wakeup_enabled=False)
    with Session(engine) as session, session.begin():
        for orderid in orderids:
            enqueue_purchase(session, purchase(orderid), settings=settings)
    if values:
        with engine.begin() as conn:
            conn.execute(events.update().where(events.c.orderid.in_(orderids)).values(values))


def row(engine: Engine, orderid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(events).where(events.c.orderid == orderid)).one()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def delivered(**extra: Any) -> dict[str, Any]:
    return {"status": Status.DELIVERED.value, "attempts": 1, "delivered_at": now(),
            "last_http_status": 200, **extra}


def test_status_counts_rows_per_status_in_text_and_json(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, "P-1", "P-2")
    seed(engine, "D-1", **delivered())
    seed(engine, "F-1", status=Status.FAILED.value, last_error="gave up")

    code, out, _ = run_cli(capsys, "status")
    assert code == 1  # the failed row is a problem found
    assert [line.split() for line in out.splitlines()[1:5]] == [
        ["pending", "2"], ["in_flight", "0"], ["delivered", "1"], ["failed", "1"]]
    assert "Dispatch:            running" in out

    code, out, _ = run_cli(capsys, "status", "--json")
    report = json.loads(out)
    assert report["counts"] == {"pending": 2, "in_flight": 0, "delivered": 1, "failed": 1}
    assert report["oldest_due_orderid"] in ("P-1", "P-2")
    assert report["paused"] is False
    assert report["deliveries_per_minute_5m"] == pytest.approx(0.2)
    last = dt.datetime.fromisoformat(report["last_delivered_at"])
    assert abs((now() - last).total_seconds()) < 60
    assert 0 <= report["oldest_due_age_seconds"] < 60


def test_status_shows_a_pause_with_its_reason(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    with engine.begin() as conn:
        control.pause(conn, reason="Spotler refused the credentials (HTTP 401)", now=now(),
                    check_at=now())
    code, out, _ = run_cli(capsys, "status")
    assert code == 1
    assert "PAUSED since" in out and "HTTP 401" in out


def test_list_filters_by_status_orderid_pattern_and_age(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, "A-1", "A-2", "B-1")
    seed(engine, "F-1", status=Status.FAILED.value, attempts=17, last_http_status=400,
         last_error="Spotler rejected the request (HTTP 400): " + "x" * 200)
    seed(engine, "OLD-1", created_at=now() - dt.timedelta(hours=3))

    code, out, _ = run_cli(capsys, "list", "--status", "failed")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["ID", "ORDERID", "STATUS", "ATTEMPTS"]
    assert len(lines) == 1 and "F-1" in lines[0] and "400" in lines[0]
    assert lines[0].endswith("...")  # the long error is cut

    _, out, _ = run_cli(capsys, "list", "--orderid", "A-*")
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["A-1", "A-2"]

    _, out, _ = run_cli(capsys, "list", "--older-than", "2h")
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["OLD-1"]

    _, out, _ = run_cli(capsys, "list", "--limit", "2")
    assert "showing 2 of 5 matching orders" in out


def test_show_masks_the_email_and_lists_every_attempt(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, "S-1", **delivered(attempts=2))
    event_id = row(engine, "S-1").id
    with engine.begin() as conn:
        for number, status, outcome in ((1, 503, "retryable"), (2, 200, "delivered")):
            record = AttemptRecord(now(), 40, 7, status, outcome, None, "excerpt", "w1")
            claims.record_attempt(conn, record, [ClaimedRow(event_id, "S-1", "{}", number, now())])

    code, out, _ = run_cli(capsys, "show", "S-1")
    assert code == 0
    assert "jane.doe@example.com" not in out
    assert '"email": "j***@***"' in out
    assert '"orderid": "S-1"' in out
    assert "Attempts (2):" in out
    attempt_lines = out.split("Attempts (2):")[1].strip().splitlines()[1:]
    assert [line.split()[3:6] for line in attempt_lines] == [
        ["1", "7", "503"], ["2", "7", "200"]]


def test_show_of_an_unknown_order_exits_3_with_one_line(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "show", "NOPE-1")
    assert code == 3
    assert out == ""
    assert err == "spotler-outbox: error: no order 'NOPE-1' in the outbox\n"


def test_retry_makes_a_failed_order_pending_due_now_with_attempts_reset(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    later = now() + dt.timedelta(days=1)
    seed(engine, "F-1", "F-2", status=Status.FAILED.value, attempts=17, next_attempt_at=later)
    code, out, _ = run_cli(capsys, "retry", "F-1")
    assert code == 0 and "pending again" in out
    retried = row(engine, "F-1")
    assert (retried.status, retried.attempts) == ("pending", 0)
    assert retried.next_attempt_at <= now()
    assert row(engine, "F-2").status == "failed"


def test_retry_of_a_delivered_order_is_refused_and_changes_nothing(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, "D-1", **delivered())
    code, _, err = run_cli(capsys, "retry", "D-1")
    assert code == 1
    assert "is delivered, not failed" in err and len(err.splitlines()) == 1
    assert row(engine, "D-1").status == "delivered"


def test_retry_all_failed_asks_first_and_refuses_without_a_terminal_unless_yes(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, "F-1", "F-2", status=Status.FAILED.value, attempts=5)
    seed(engine, "P-1")

    code, _, err = run_cli(capsys, "retry", "--all-failed")
    assert code == 2 and "pass --yes" in err
    assert row(engine, "F-1").status == "failed"

    code, out, _ = run_cli(capsys, "retry", "--all-failed", "--yes")
    assert code == 0 and out.startswith("2 failed orders are pending again")
    assert {row(engine, o).status for o in ("F-1", "F-2", "P-1")} == {"pending"}


def test_resend_records_an_operator_resend_of_a_delivered_order(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, "D-1", "D-2", **delivered())
    code, _, err = run_cli(capsys, "resend", "D-1")
    assert code == 2 and "pass --yes" in err

    code, out, _ = run_cli(capsys, "resend", "D-1", "--yes")
    assert code == 0 and "will be sent again" in out
    resent = row(engine, "D-1")
    assert (resent.status, resent.resends, resent.attempts) == ("pending", 1, 0)
    assert resent.last_error.startswith("re-send requested by operator at ")
    assert resent.next_attempt_at <= now()
    assert row(engine, "D-2").status == "delivered"

    code, _, err = run_cli(capsys, "resend", "D-1", "--yes")
    assert code == 1 and "is pending, not delivered" in err


def test_purge_empties_only_old_delivered_rows_keeps_their_orderids_and_drops_lone_attempts(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    old = now() - dt.timedelta(days=40)
    seed(engine, "OLD-1", "OLD-2", **delivered(delivered_at=old))
    seed(engine, "NEW-1", **delivered())
    seed(engine, "OLD-FAILED", status=Status.FAILED.value, updated_at=old)
    ids = {o: row(engine, o).id for o in ("OLD-1", "OLD-2", "NEW-1")}
    with engine.begin() as conn:
        record = AttemptRecord(old, 10, 2, 200, "delivered", None, None, None)
        rows = [ClaimedRow(ids[o], o, "{}", 1, old) for o in ("OLD-1", "OLD-2")]
        only_old = claims.record_attempt(conn, record, rows)
        mixed = claims.record_attempt(conn, record, [
            ClaimedRow(ids["OLD-1"], "OLD-1", "{}", 2, old),
            ClaimedRow(ids["NEW-1"], "NEW-1", "{}", 1, old)])

    code, out, _ = run_cli(capsys, "purge", "--delivered-before", "30d")
    assert code == 0
    assert out.startswith("purged 2 orders delivered before") and "and 1 delivery" in out
    with engine.connect() as conn:
        payloads = dict(conn.execute(sa.select(events.c.orderid, events.c.payload)).all())
        attempts = set(conn.execute(sa.select(tables.attempts_table.c.id)).scalars())
    assert set(payloads) == {"OLD-1", "OLD-2", "NEW-1", "OLD-FAILED"}
    assert payloads["OLD-1"] == payloads["OLD-2"] == ""
    assert "jane.doe@example.com" in payloads["NEW-1"] and payloads["OLD-FAILED"]
    assert attempts == {mixed} and only_old not in attempts
    assert row(engine, "OLD-1").delivered_at == old and row(engine, "OLD-1").purged_at


def test_import_of_json_lines_reports_refused_lines_and_is_idempotent(
    cli_env: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = purchase("J-3", email="jane.doe@example")
    bad["products"] = [{"id": "SKU-1", "quantity": 0}]
    lines = [json.dumps(purchase("J-1")), json.dumps(purchase("J-2")), "",
             json.dumps(bad), "{not json"]
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    code, out, _ = run_cli(capsys, "import", str(path))
    assert code == 1
    assert out.splitlines()[0] == "enqueued 2, already present 0, refused 2"
    assert "line 4: email: must be an e-mail address" in out
    assert "products[0].quantity: must be a positive integer" in out
    assert "line 5: not valid JSON" in out
    assert "jane.doe@example" not in out

    code, out, _ = run_cli(capsys, "import", str(path))
    assert code == 1
    assert out.splitlines()[0] == "enqueued 0, already present 2, refused 2"
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 2


def test_import_of_csv_groups_product_rows_by_orderid_and_names_the_bad_field(
    cli_env: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "orderid,email,currency,timestamp,product_id,quantity,price\n"
        "C-1,ann@example.com,EUR,1795000000,SKU-1,2,9.95\n"
        "C-2,bob@example.com,EUR,,SKU-9,x,1.00\n"
        "C-1,ann@example.com,EUR,1795000000,SKU-2,1,3.50\n", encoding="utf-8")

    code, out, _ = run_cli(capsys, "import", str(path))
    assert code == 1
    assert out.splitlines()[0] == "enqueued 1, already present 0, refused 1"
    assert "line 3: products[0].quantity: must be a positive integer" in out
    payload = json.loads(row(engine, "C-1").payload)
    assert payload["timestamp"] == 1795000000
    assert payload["products"] == [{"id": "SKU-1", "quantity": 2, "price": 9.95},
                                   {"id": "SKU-2", "quantity": 1, "price": 3.5}]

    code, out, _ = run_cli(capsys, "import", str(path))
    assert out.splitlines()[0] == "enqueued 0, already present 1, refused 1"


def test_import_of_csv_with_a_products_json_column(
    cli_env: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "orders.csv"
    path.write_text('orderid,email,products\nK-1,kim@example.com,"[{""id"": ""S"", '
                    '""quantity"": 1}]"\n', encoding="utf-8")
    code, out, _ = run_cli(capsys, "import", str(path))
    assert (code, out.splitlines()[0]) == (0, "enqueued 1, already present 0, refused 0")
    assert json.loads(row(engine, "K-1").payload)["products"] == [{"id": "S", "quantity": 1}]


def test_an_unreachable_database_gives_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL",
                       "postgresql+psycopg://outbox:s3cret-pw@127.0.0.1:9/outbox")
    reset_settings()
    code, _, err = run_cli(capsys, "status")
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("spotler-outbox: error: cannot use the database at "
                          "postgresql+psycopg://outbox:***@127.0.0.1:9/outbox")
    assert "s3cret-pw" not in err and "Traceback" not in err


def test_a_missing_sqlite_outbox_is_reported_instead_of_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", f"sqlite:///{tmp_path / 'absent.db'}")
    reset_settings()
    code, _, err = run_cli(capsys, "list")
    assert code == 2 and "no SQLite outbox at" in err and "migrate" in err
    assert not (tmp_path / "absent.db").exists()


def test_migrate_creates_an_outbox_that_status_can_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    reset_settings()
    code, out, _ = run_cli(capsys, "migrate")
    assert code == 0 and "schema is up to date" in out
    code, out, _ = run_cli(capsys, "status", "--json")
    assert code == 0 and json.loads(out)["total"] == 0


@pytest.fixture
def fake() -> Iterator[RunningFakeApi]:
    with start_fake_api(account=ACCOUNT, api_key=API_KEY) as running:
        yield running


def spotler_env(monkeypatch: pytest.MonkeyPatch, fake: RunningFakeApi, key: str) -> None:
    monkeypatch.setenv("SPOTLER_API_URL", fake.url)
    monkeypatch.setenv("SPOTLER_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("SPOTLER_API_KEY", key)
    reset_settings()


def test_check_with_the_right_key_verifies_and_sends_one_test_purchase(
    fake: RunningFakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spotler_env(monkeypatch, fake, API_KEY)
    code, out, err = run_cli(capsys, "check", "--send-test-purchase", "--email",
                         "tester@example.com", "--sku", "SKU-CHECK", "--yes")
    assert code == 0, err
    assert "verifyAuth: OK, Spotler answered HTTP 200" in out
    assert "track: Spotler answered HTTP 200" in out and '"created":1' in out
    assert "Api inserted / api verified" in out
    assert "tester@example.com" not in out and API_KEY not in out + err
    received = fake.state.received()["orderids"]
    assert len(received) == 1
    orderid = next(iter(received))
    assert orderid.startswith("spotler-outbox-check-") and orderid in out
    assert fake.state.events_for(orderid)[0]["products"][0]["id"] == "SKU-CHECK"


def test_check_with_a_wrong_key_reports_what_spotler_answered_and_exits_1(
    fake: RunningFakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spotler_env(monkeypatch, fake, "not-the-key")
    code, out, err = run_cli(capsys, "check", "--send-test-purchase", "--email", "t@example.com")
    assert code == 1
    assert "verifyAuth: FAILED, Spotler answered HTTP 401" in out
    assert "not-the-key" not in out + err
    assert fake.state.received()["requests"] == 0  # no purchase after a failed check


def test_check_without_credentials_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPOTLER_ACCOUNT", "")
    monkeypatch.setenv("SPOTLER_API_KEY", "")
    reset_settings()
    code, _, err = run_cli(capsys, "check")
    assert code == 2
    assert err == ("spotler-outbox: error: SPOTLER_ACCOUNT and SPOTLER_API_KEY must both be "
                   "set\n")
