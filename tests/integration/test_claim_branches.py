"""The rare ends of a claim, each forced on purpose: out of time, part of it lost before or
after sending, rows crashed on too often, a 429 without Retry-After, a pause's end."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.models import claims, control
from spotler_outbox.models.clock import as_utc, utc_now
from spotler_outbox.models.ledger import CARRIED_NOTE
from spotler_outbox.models.tables import Status
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi
from spotler_outbox.worker.spotler.client import Accepted
from tests.integration.fixtures import ACCOUNT, API_KEY, row, seed, seed_row, statuses
from tests.integration.test_dispatch import drain, make_dispatcher


def steal(engine: Engine, orderid: str) -> None:
    """What another worker does once a lease ran out: the row carries its token now."""
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_events SET claim_token = 'thief' "
                             "WHERE orderid = :o"), {"o": orderid})


def test_a_claim_that_runs_out_of_time_hands_the_rest_back_counting_only_the_attempts_that_left(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    # Halving 8 events down to the bad one takes 7 requests of 1.2 s: more than the 7 s a
    # claim may take, so the last parts go back unsent.
    dispatcher = make_dispatcher(database_url, api, batch_size=8, lease_seconds=7.0,
                                 connect_timeout=0.5, read_timeout=1.5)
    seed(engine, [f"OT-{i}" for i in range(8)], dispatcher.settings)
    api.state.set_faults(Faults(reject_orderids=["OT-7"], latency_ms=1200))
    report = dispatcher.run(budget_seconds=0)
    assert report.released > 0
    handed_back = [o for o, s in statuses(engine).items() if s == Status.PENDING]
    assert handed_back
    for orderid in handed_back:
        # The first request (answered 400) carried all eight: that attempt stands.
        assert row(engine, orderid).attempts == 1
        assert row(engine, orderid).last_error.startswith(CARRIED_NOTE)
        assert "ran out of time or was halted" in row(engine, orderid).last_error
    api.state.set_faults(Faults(reject_orderids=["OT-7"]))
    drain(dispatcher)
    result = statuses(engine)
    assert result.pop("OT-7") == Status.FAILED
    assert set(result.values()) == {Status.DELIVERED}
    assert all(n == 1 for n in api.state.received()["orderids"].values())


def test_a_claim_halted_by_a_429_mid_split_sends_no_more_and_keeps_the_attempt_its_batch_counted(
    database_url: str, engine: Engine, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=4)
    seed(engine, ["HL-1", "HL-2", "HL-3", "HL-4"], dispatcher.settings)
    api.state.set_faults(Faults(reject_orderids=["HL-1"]))
    track = dispatcher.client.track_json

    def then_throttled(events: Any) -> Accepted:
        try:
            return track(events)
        finally:  # after the 400 that splits the batch, Spotler starts throttling
            api.state.set_faults(Faults(rate_limit_seconds=30))

    monkeypatch.setattr(dispatcher.client, "track_json", then_throttled)
    report = dispatcher.run(budget_seconds=0)
    assert report.rate_limited
    assert [r["status"] for r in api.state.request_log()] == [400, 429]  # not the other half
    assert set(statuses(engine).values()) == {Status.PENDING}
    notes = {row(engine, o).last_error for o in ("HL-1", "HL-2", "HL-3", "HL-4")}
    assert any("ran out of time or was halted" in (note or "") for note in notes)
    assert all((note or "").startswith(CARRIED_NOTE) for note in notes)
    # The 400 carried all four: the attempt stands (the 429 counts none of its own).
    assert all(row(engine, o).attempts == 1 for o in ("HL-1", "HL-2", "HL-3", "HL-4"))


def test_rows_a_partial_answer_sends_again_alone_are_never_handed_back_as_unsent_after_a_429(
    database_url: str, engine: Engine, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=3)
    orders = ["PA-1", "PA-2", "PA-3"]
    seed(engine, orders, dispatcher.settings)
    api.state.set_faults(Faults(accept_fewer=True))  # Spotler takes two of the three
    track = dispatcher.client.track_json

    def then_throttled(events: Any) -> Accepted:
        try:
            return track(events)
        finally:  # the first event sent again alone meets a 429
            api.state.set_faults(Faults(rate_limit_seconds=30))

    monkeypatch.setattr(dispatcher.client, "track_json", then_throttled)
    report = dispatcher.run(budget_seconds=0)
    assert report.rate_limited
    assert [r["events"] for r in api.state.request_log()] == [3, 1]
    assert sum(api.state.received()["orderids"].values()) == 2  # two may be at Spotler now
    for orderid in orders:
        kept = row(engine, orderid)
        assert kept.status == Status.PENDING
        assert kept.attempts == 1  # the first request carried it: its attempt stands
        assert kept.last_error.startswith(CARRIED_NOTE)


def test_the_lease_still_covers_a_whole_request_when_a_401_makes_the_worker_ask_verify_auth(
    database_url: str, engine: Engine, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lease = connect + read + margin = 7 s: one request's worth. The 401 took 1.2 s of it.
    dispatcher = make_dispatcher(database_url, api, batch_size=2, lease_seconds=7.0,
                                 connect_timeout=0.5, read_timeout=1.5)
    seed(engine, ["VA-1", "VA-2"], dispatcher.settings)
    api.state.set_credentials(ACCOUNT, "rotated-key")  # the fake answers 401 at once
    lease_left: list[float] = []
    track, verify = dispatcher.client.track_json, dispatcher.client.verify_auth

    def slow_401(events: Any) -> Accepted:
        try:
            return track(events)
        finally:
            time.sleep(1.2)

    def noting_the_lease() -> Accepted:
        expires = as_utc(row(engine, "VA-1").lease_expires_at)
        assert expires is not None
        lease_left.append((expires - utc_now()).total_seconds())
        return verify()

    monkeypatch.setattr(dispatcher.client, "track_json", slow_401)
    monkeypatch.setattr(dispatcher.client, "verify_auth", noting_the_lease)
    assert dispatcher.run(budget_seconds=0).paused
    # The check is a request like any other, so the lease is renewed for one: about 7 s
    # left as it starts, not the 5.8 s the first request left.
    assert len(lease_left) == 1 and lease_left[0] > 6.5


def test_a_claim_that_lost_part_of_its_rows_before_sending_sends_nothing_more(
    database_url: str, engine: Engine, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lease = connect + read + margin: every request after the first renews the claim first.
    dispatcher = make_dispatcher(database_url, api, batch_size=4, lease_seconds=7.0,
                                 connect_timeout=0.5, read_timeout=1.5)
    seed(engine, ["PL-1", "PL-2", "PL-3", "PL-4"], dispatcher.settings)
    api.state.set_faults(Faults(reject_orderids=["PL-1"]))
    track = dispatcher.client.track_json

    def first_request_then_a_theft(events: Any) -> Accepted:
        try:
            return track(events)
        finally:
            stolen = next(o for o in ("PL-1", "PL-2", "PL-3", "PL-4")
                          if row(engine, o).claim_token != "thief")
            steal(engine, stolen)

    monkeypatch.setattr(dispatcher.client, "track_json", first_request_then_a_theft)
    report = dispatcher.run(budget_seconds=0)
    assert report.lost_claims == 1 and report.requests == 1
    assert len(api.state.request_log()) == 1  # nothing sent once the claim was incomplete
    result = statuses(engine)
    assert sorted(result.values()).count(Status.PENDING) == 3
    for orderid, status in result.items():
        if status == Status.PENDING:
            assert "part of the claim was lost" in row(engine, orderid).last_error
            assert row(engine, orderid).attempts == 1  # the first request carried them


def test_rows_sent_after_their_claim_passed_to_another_worker_are_not_marked_by_this_one(
    database_url: str, engine: Engine, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=2)
    seed(engine, ["LC-1", "LC-2"], dispatcher.settings)
    track = dispatcher.client.track_json

    def sent_while_the_lease_passed(events: Any) -> Accepted:
        accepted = track(events)
        steal(engine, "LC-2")  # Spotler took it; meanwhile another worker claimed it
        return accepted

    monkeypatch.setattr(dispatcher.client, "track_json", sent_while_the_lease_passed)
    with caplog.at_level(logging.ERROR):
        report = dispatcher.run(budget_seconds=0)
    assert (report.delivered, report.lost_claims) == (1, 1)
    assert row(engine, "LC-1").status == Status.DELIVERED
    stolen = row(engine, "LC-2")
    assert (stolen.status, stolen.claim_token) == (Status.IN_FLIGHT, "thief")
    assert "1 rows were sent but their claim had passed to another worker" in caplog.text


def test_a_row_claimed_more_often_than_its_attempts_allow_is_parked_without_a_request(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, max_attempts=3)
    # Three claims ended with no answer recorded (the worker was killed each time).
    seed_row(engine, "CR-1", attempts=3)
    dispatcher.run(budget_seconds=0)
    parked = row(engine, "CR-1")
    assert parked.status == Status.FAILED
    assert "gave up: claimed 3 times without an answer being recorded" in parked.last_error
    assert api.state.request_log() == []


def test_a_429_without_retry_after_still_holds_every_worker_for_a_first_backoff_step(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, backoff_base=1.0, backoff_cap=1.0)
    seed(engine, ["RA-1"], dispatcher.settings)
    api.state.set_faults(Faults(fail_next=1, error_status=429))  # no Retry-After header
    report = dispatcher.run(budget_seconds=0)
    assert report.rate_limited
    assert "Retry-After" not in str(api.state.request_log())
    assert row(engine, "RA-1").attempts == 0
    with engine.connect() as conn:
        state = control.read_control(conn)
    now = dt.datetime.now(dt.UTC)
    assert state.rate_limited(now)  # held: base 1 s, jittered, plus 1 s
    assert dispatcher.run(budget_seconds=0).rate_limited
    assert len(api.state.request_log()) == 1
    drain(dispatcher)
    assert row(engine, "RA-1").status == Status.DELIVERED


def test_the_end_of_a_credentials_pause_gives_the_waiting_rows_a_full_retry_window(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, max_age=3600)
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    seed_row(engine, "PW-1", created_at=two_days_ago)
    api.state.set_credentials(ACCOUNT, "rotated")
    assert dispatcher.run(budget_seconds=0).paused
    api.state.set_credentials(ACCOUNT, API_KEY)
    time.sleep(0.25)  # the next credential check is due
    assert dispatcher.recheck_credentials() is True
    api.state.set_faults(Faults(fail_next=1, error_status=503))
    dispatcher.run(budget_seconds=0)
    # Two days old, max age one hour: without the fresh window it would be failed now.
    assert row(engine, "PW-1").status == Status.PENDING
    drain(dispatcher)
    assert row(engine, "PW-1").status == Status.DELIVERED


def test_a_claim_takes_rows_whose_lease_expired_before_pending_ones_and_no_more_than_its_limit(
    engine: Engine,
) -> None:
    now = utc_now()
    for n in range(3):  # their worker died: in flight, lease run out, the newest of all
        seed_row(engine, f"EXPIRED-{n}", status=Status.IN_FLIGHT.value, claim_token="dead",
                 next_attempt_at=now - dt.timedelta(seconds=1 + n),
                 lease_expires_at=now - dt.timedelta(seconds=1 + n))
    for n in range(5):  # due for longer
        seed_row(engine, f"PENDING-{n}", next_attempt_at=now - dt.timedelta(minutes=10 - n))
    lease = now + dt.timedelta(minutes=2)

    def claim(limit: int) -> list[str]:  # in no promised order
        with engine.begin() as conn:
            return [r.orderid for r in claims.claim_due(
                conn, limit=limit, token=f"t{limit}", now=now, lease_until=lease)]

    assert sorted(claim(2)) == ["EXPIRED-1", "EXPIRED-2"]  # the oldest expiry first
    assert sorted(claim(2)) == ["EXPIRED-0", "PENDING-0"]
    assert sorted(claim(10)) == [f"PENDING-{n}" for n in range(1, 5)]
    assert {row(engine, f"PENDING-{n}").status for n in range(5)} == {Status.IN_FLIGHT.value}


STOPS: list[tuple[str, dict[str, int | None], bool]] = [
    # (what, {"paused": 1 or None, "hold": seconds from now or None}, the claim takes the row)
    ("no control row", {}, True),
    ("paused", {"paused": 1}, False),
    ("held for another minute", {"hold": 60}, False),
    ("a hold that has passed", {"hold": -60}, True),
    ("paused and held", {"paused": 1, "hold": 60}, False),
    ("paused, the hold passed", {"paused": 1, "hold": -60}, False),
]


@pytest.mark.parametrize(("what", "stop", "claimed"), STOPS, ids=[s[0] for s in STOPS])
def test_the_claim_and_the_workers_reading_of_the_control_row_agree_on_a_stopped_account(
    engine: Engine, what: str, stop: dict[str, int | None], claimed: bool,
) -> None:
    """Two spellings of "stopped": the claim statement's, and Control's, which the sweeper and
    the dispatch report read. They must not drift apart."""
    now = utc_now()
    seed_row(engine, "O-1", next_attempt_at=now - dt.timedelta(seconds=1))
    with engine.begin() as conn:
        if stop.get("paused"):
            control.pause(conn, reason="401", now=now, check_at=now + dt.timedelta(minutes=5))
        if stop.get("hold") is not None:
            control.hold_until(conn, now=now,
                               not_before=now + dt.timedelta(seconds=stop["hold"] or 0))
    with engine.begin() as conn:
        state = control.read_controls(conn).get("", control.NO_CONTROL)
        rows = claims.claim_due(conn, limit=10, token="t", now=now,
                                lease_until=now + dt.timedelta(minutes=2))
    assert bool(rows) is claimed
    assert (not state.paused and not state.rate_limited(now)) is claimed
