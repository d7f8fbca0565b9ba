"""`spotler-outbox forget --email`: checked by raw SQL over every text column of every table."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase
from spotler_outbox.models import claims, erasure
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import events
from spotler_outbox.worker.console.cli import main
from tests.conftest import purchase
from tests.integration.fixtures import row

PERSON = "Erase.Me@Example.com"
OTHER = "keep.me@example.com"



def traces(engine: Engine, needle: str) -> list[str]:
    """table.column of every text value holding `needle`, whatever the case: the oracle reads
    the live schema, not the models, and knows nothing of how forget searches."""
    found = []
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        for table in inspector.get_table_names():
            for column in inspector.get_columns(table):
                if not isinstance(column["type"], sa.String):  # Text, VARCHAR, LONGTEXT...
                    continue
                count = conn.execute(sa.text(
                    f"SELECT count(*) FROM {table} WHERE lower({column['name']}) LIKE :n"),
                    {"n": f"%{needle.lower()}%"}).scalar_one()
                if count:
                    found.append(f"{table}.{column['name']}")
    return found


def enqueue(engine: Engine, settings: Settings, orderid: str, email: str) -> int:
    with Session(engine) as session, session.begin():
        return enqueue_purchase(session, purchase(orderid, email=email), settings=settings).id


def set_row(engine: Engine, orderid: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(events.update().where(events.c.orderid == orderid).values(values))


def attempt(engine: Engine, excerpt: str, *rows: tuple[int, str]) -> int:
    record = claims.AttemptRecord(utc_now(), 5, len(rows), 400, "rejected", None, excerpt, "w")
    with engine.begin() as conn:
        return claims.record_attempt(conn, record, [claims.ClaimedRow(i, o, "", 1, utc_now())
                                                    for i, o in rows])


def seed_person(engine: Engine, settings: Settings, email: str) -> dict[str, int]:
    ids = {o: enqueue(engine, settings, o, email) for o in ("P-DELIVERED", "P-FAILED",
                                                              "P-PENDING", "P-FLIGHT")}
    ids["O-1"] = enqueue(engine, settings, "O-1", OTHER)
    ids["O-2"] = enqueue(engine, settings, "O-2", OTHER)  # retried with a shared batch's error
    now = utc_now()
    set_row(engine, "P-DELIVERED", status="delivered", delivered_at=now)
    set_row(engine, "P-FAILED", status="failed",
            last_error=f"HTTP 400: profile {email} refused")
    set_row(engine, "P-FLIGHT", status="in_flight", claim_token="t" * 32, lease_expires_at=now)
    set_row(engine, "O-2", last_error=f"HTTP 500: upstream choked on {email}")
    attempt(engine, f'{{"errors":["bad profile {email}"]}}', (ids["P-FAILED"], "P-FAILED"))
    attempt(engine, '{"success":true}', (ids["P-DELIVERED"], "P-DELIVERED"), (ids["O-1"], "O-1"))
    attempt(engine, '{"success":true}', (ids["O-1"], "O-1"))
    return ids


def test_forget_erases_every_trace_of_the_address_and_reports_what_became_of_each_order(
    cli_env: str, engine: Engine, settings: Settings, capsys: pytest.CaptureFixture[str],
) -> None:
    seed_person(engine, settings, PERSON)
    assert traces(engine, PERSON)  # the oracle sees what there is to see

    assert main(["forget", "--email", PERSON]) == 2  # no terminal to confirm on
    assert "pass --yes" in capsys.readouterr().err and traces(engine, PERSON)

    assert main(["forget", "--email", "  erase.me@EXAMPLE.com ", "--yes"]) == 0
    out = capsys.readouterr().out
    assert traces(engine, PERSON) == []
    assert "1 order(s) delivered: payload emptied" in out and "P-DELIVERED" in out
    assert "1 order(s) not delivered yet: payload emptied, parked as failed" in out
    assert "1 order(s) being sent right now" in out and "will never be sent" in out
    assert ("erased: 1 delivered order(s) emptied (orderids kept), 3 undelivered or failed "
            "order(s) emptied and parked unsent, 2 attempt excerpt(s) replaced") in out
    assert PERSON.lower() not in out.lower()

    assert row(engine, "P-DELIVERED").status == "delivered"
    assert {row(engine, o).status for o in ("P-FAILED", "P-PENDING", "P-FLIGHT")} == {"failed"}
    assert OTHER in row(engine, "O-1").payload
    other = row(engine, "O-2")  # someone else's order: still to be sent, only the text went
    assert (other.status, other.purged_at) == ("pending", None) and OTHER in other.payload
    assert "1 order(s) of someone else, whose last error quotes the address" in out
    with Session(engine) as session, session.begin():  # erased orders are never sent again
        assert not enqueue_purchase(session, purchase("P-PENDING"), settings=settings).created
    assert main(["retry", "P-PENDING"]) == 1 and "was purged" in capsys.readouterr().err
    assert main(["forget", "--email", PERSON, "--yes"]) == 0
    assert "nothing in the outbox mentions" in capsys.readouterr().out


def test_forget_by_address_finds_orders_stored_with_the_hashed_address(
    cli_env: str, engine: Engine, settings: Settings, capsys: pytest.CaptureFixture[str],
) -> None:
    digest = hashlib.sha256(PERSON.lower().encode()).hexdigest()  # Spotler's documented hash
    seed_person(engine, settings.with_overrides(hash_email=True), PERSON)
    assert "outbox_events.payload" in traces(engine, digest)
    assert main(["forget", "--email", PERSON, "--yes"]) == 0
    assert traces(engine, digest) == [] and traces(engine, PERSON) == []
    assert "4 undelivered" not in capsys.readouterr().out


def test_forget_by_sha256_erases_the_hashed_orders(
    cli_env: str, engine: Engine, settings: Settings,
) -> None:
    digest = hashlib.sha256(PERSON.lower().encode()).hexdigest()
    seed_person(engine, settings.with_overrides(hash_email=True), PERSON)
    assert main(["forget", "--email", digest.upper(), "--yes"]) == 0
    assert traces(engine, digest) == []


def test_forget_leaves_a_longer_address_that_contains_this_one_alone(
    cli_env: str, engine: Engine, settings: Settings,
) -> None:
    enqueue(engine, settings, "MINE", "a@example.com")
    for orderid, email in (("LONGER", "ba@example.com"), ("DOMAIN", "a@example.com.au"),
                           ("TAGGED", "x.a@example.com")):
        enqueue(engine, settings, orderid, email)
    assert main(["forget", "--email", "a@example.com", "--yes"]) == 0
    assert row(engine, "MINE").payload == ""
    assert all(row(engine, o).payload for o in ("LONGER", "DOMAIN", "TAGGED"))


def test_an_orderid_holding_the_address_is_reported_as_not_erasable(
    cli_env: str, engine: Engine, settings: Settings, capsys: pytest.CaptureFixture[str],
) -> None:
    enqueue(engine, settings, f"order:{PERSON}", PERSON)
    assert main(["forget", "--email", PERSON, "--yes"]) == 1
    assert "NOT erased: 1 orderid(s) hold the address" in capsys.readouterr().out
    assert traces(engine, PERSON) == ["outbox_events.orderid"]


@pytest.mark.parametrize(("text", "expected"), [
    ("jane@example.com", True), ('{"email":"JANE@example.com"}', True),
    ("xjane@example.com", False), ("jane@example.community", False),
    ("jane@example.com.", True), ("<jane@example.com>", True), ("jane@example.co", False),
    (None, False), ("", False),
])
def test_an_address_is_matched_as_a_whole_token_whatever_its_case(
    text: str | None, expected: bool,
) -> None:
    assert erasure.mentions(text, erasure.needles_for("jane@example.com")) is expected


@pytest.mark.parametrize(("status", "action"), [
    ("delivered", erasure.Action.EMPTY_DELIVERED), ("failed", erasure.Action.EMPTY_FAILED),
    ("pending", erasure.Action.PARK_UNSENT), ("in_flight", erasure.Action.PARK_IN_FLIGHT),
])
def test_each_status_has_its_erasure_action(status: str, action: erasure.Action) -> None:
    assert erasure.action_for(status) is action


def test_forget_refuses_what_is_neither_an_address_nor_a_sha256() -> None:
    from spotler_outbox.models.errors import UsageError

    for text in ("jane", "", "a b@example.com", "abc123"):
        with pytest.raises(UsageError, match="--email"):
            erasure.needles_for(text)
