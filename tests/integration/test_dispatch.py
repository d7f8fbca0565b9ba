"""The dispatcher, in-process, against the fake Spotler API on loopback and real databases."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.models import claims
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.tables import DeliveryAttempt, Status
from spotler_outbox.worker.dispatch import Dispatcher, DispatchReport, batch
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi, start_fake_api
from spotler_outbox.worker.spotler.client import SpotlerClient
from tests.conftest import purchase
from tests.integration.fixtures import (
    ACCOUNT,
    API_KEY,
    delivery_settings,
    insert_raw,
    row,
    seed,
    seed_row,
    statuses,
)


@pytest.fixture(scope="module")
def fake_api() -> Iterator[RunningFakeApi]:
    with start_fake_api(account=ACCOUNT, api_key=API_KEY) as api:
        yield api


@pytest.fixture
def api(fake_api: RunningFakeApi) -> RunningFakeApi:
    fake_api.state.reset()
    fake_api.state.set_credentials(ACCOUNT, API_KEY)
    return fake_api


def make_dispatcher(database_url: str, api: RunningFakeApi, **overrides: object) -> Dispatcher:
    settings = delivery_settings(database_url, api.url, **overrides)
    from spotler_outbox.models.database import make_engine

    return Dispatcher(make_engine(settings.database_url), SpotlerClient(settings), settings,
                      worker_name="test")


def drain(dispatcher: Dispatcher, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dispatcher.run(budget_seconds=5)
        with dispatcher.engine.connect() as conn:
            pending = conn.execute(sa.text(
                "SELECT count(*) FROM outbox_events WHERE status IN ('pending', 'in_flight')"
            )).scalar_one()
        if not pending:
            return
        time.sleep(0.05)
    raise AssertionError("rows still pending after the drain")


def test_a_batch_of_orders_is_delivered_in_one_request_and_marked(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=50)
    seed(engine, [f"B-{i}" for i in range(30)], dispatcher.settings)
    report = dispatcher.run()
    assert report.delivered == 30 and report.requests == 1
    assert set(statuses(engine).values()) == {Status.DELIVERED}
    assert api.state.received()["orderids"] == {f"B-{i}": 1 for i in range(30)}
    with engine.connect() as conn:
        attempts = conn.execute(sa.select(DeliveryAttempt)).all()
    assert len(attempts) == 1 and attempts[0].event_count == 30


def test_a_delivered_row_is_never_sent_again(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api)
    seed(engine, ["C-1"], dispatcher.settings)
    dispatcher.run()
    seed(engine, ["C-1"], dispatcher.settings)  # re-enqueue of a delivered orderid
    assert dispatcher.run().claimed == 0
    assert api.state.received()["orderids"] == {"C-1": 1}


def test_a_poison_event_inside_a_batch_is_parked_and_the_rest_delivered(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=16)
    seed(engine, [f"P-{i}" for i in range(16)], dispatcher.settings)
    api.state.set_faults(Faults(reject_orderids=["P-11"]))
    dispatcher.run()
    result = statuses(engine)
    assert result.pop("P-11") == Status.FAILED
    assert set(result.values()) == {Status.DELIVERED}
    assert "P-11" in (row(engine, "P-11").last_error or "")
    assert row(engine, "P-11").last_http_status == 400
    assert all(count == 1 for count in api.state.received()["orderids"].values())
    # Halving: 16, then two halves per level down to the one bad event (each alone: 17).
    assert sorted(r["events"] for r in api.state.request_log()) == [1, 1, 2, 2, 4, 4, 8, 8, 16]


def test_a_stretch_of_server_errors_is_retried_with_backoff_until_delivered(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=10)
    seed(engine, [f"R-{i}" for i in range(10)], dispatcher.settings)
    api.state.set_faults(Faults(fail_next=3, error_status=503))
    drain(dispatcher)
    assert set(statuses(engine).values()) == {Status.DELIVERED}
    with engine.connect() as conn:
        outcomes = [r.outcome for r in conn.execute(sa.select(DeliveryAttempt))]
        attempts = conn.execute(sa.text("SELECT sum(attempts) FROM outbox_events")).scalar_one()
    assert outcomes.count("retryable") == 3
    # Each row counts one attempt per request that carried it: the failed ones and the last.
    failed_events = sum(r["events"] for r in api.state.request_log() if r["status"] == 503)
    assert attempts == 10 + failed_events
    assert api.state.received()["orderids"] == {f"R-{i}": 1 for i in range(10)}


def test_each_request_records_which_orders_it_carried_and_which_attempt_of_theirs_it_was(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=10)
    orderids = [f"W-{i}" for i in range(6)]
    seed(engine, orderids, dispatcher.settings)
    api.state.set_faults(Faults(fail_next=1, error_status=503))
    drain(dispatcher)
    with engine.connect() as conn:
        carried = conn.execute(sa.text(
            "SELECT a.id, a.outcome, o.orderid, e.attempt_number FROM delivery_attempt_events e "
            "JOIN delivery_attempts a ON a.id = e.attempt_id "
            "JOIN outbox_events o ON o.id = e.outbox_event_id ORDER BY a.id")).all()
    # The oracle is the fake API's own log: how many events each request carried, in order.
    per_attempt: dict[int, list[str]] = {}
    for attempt_id, outcome, _, _ in carried:
        per_attempt.setdefault(attempt_id, []).append(outcome)
    assert [(o[0], len(o)) for o in per_attempt.values()] == [
        ({503: "retryable", 200: "delivered"}[r["status"]], r["events"])
        for r in api.state.request_log()]
    assert sorted((o, n) for _, _, o, n in carried) == sorted(
        [(o, 1) for o in orderids] + [(o, 2) for o in orderids])


def test_a_row_whose_attempts_run_out_is_failed_with_its_last_error(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, max_attempts=3)
    seed(engine, ["F-1"], dispatcher.settings)
    api.state.set_faults(Faults(error_rate=1.0, error_status=502))
    drain(dispatcher)
    failed = row(engine, "F-1")
    assert failed.status == Status.FAILED and failed.attempts == 3
    assert "HTTP 502" in failed.last_error


def test_a_401_pauses_dispatch_without_burning_attempts_and_resumes_when_the_key_works(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api)
    seed(engine, ["A-1", "A-2"], dispatcher.settings)
    api.state.set_credentials(ACCOUNT, "rotated-key")
    report = dispatcher.run()
    assert report.paused
    assert row(engine, "A-1").attempts == 0 and row(engine, "A-1").status == Status.PENDING
    assert dispatcher.run().paused  # stays paused: nothing claimed
    assert dispatcher.recheck_credentials() in (None, False)
    api.state.set_credentials(ACCOUNT, API_KEY)
    time.sleep(0.25)
    assert dispatcher.recheck_credentials() is True
    dispatcher.run()
    assert set(statuses(engine).values()) == {Status.DELIVERED}
    assert row(engine, "A-1").attempts == 1


def test_a_429_holds_every_request_until_retry_after_has_passed(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api)
    seed(engine, ["L-1"], dispatcher.settings)
    # Retry-After: 3, three times the hold without the header (a first backoff step of
    # 0.05 s plus 1 s): a hold that ignored the header would knock again after about 1 s.
    api.state.set_faults(Faults(rate_limit_seconds=3.0))
    assert dispatcher.run().rate_limited
    assert row(engine, "L-1").attempts == 0
    assert dispatcher.run().rate_limited  # no request while held
    assert len(api.state.request_log()) == 1
    drain(dispatcher)
    log = api.state.request_log()
    assert log[0]["status"] == 429 and log[-1]["status"] == 200
    assert log[1]["at"] - log[0]["at"] >= 2.95


def test_a_partial_answer_is_not_recorded_as_delivered_and_each_event_goes_once_more_alone(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=4)
    seed(engine, ["Q-1", "Q-2", "Q-3", "Q-4"], dispatcher.settings)
    api.state.set_faults(Faults(accept_fewer=True))  # takes all but the last of the four
    dispatcher.run()
    assert set(statuses(engine).values()) == {Status.DELIVERED}
    # Each alone, never halves (4, 2, 2, ...): an event Spotler took is repeated at most once.
    assert [r["events"] for r in api.state.request_log()] == [4, 1, 1, 1, 1]
    # The three taken the first time are repeated once (Spotler merges them on orderid).
    assert sorted(api.state.received()["orderids"].values()) == [1, 2, 2, 2]
    with engine.connect() as conn:
        outcomes = [r.outcome for r in conn.execute(
            sa.select(DeliveryAttempt).order_by(DeliveryAttempt.id))]
    assert outcomes == ["partial", "delivered", "delivered", "delivered", "delivered"]


def test_a_2xx_saying_only_success_false_is_not_taken_as_delivered_and_each_event_goes_again(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=3)
    orderids = ["SF-1", "SF-2", "SF-3"]
    seed(engine, orderids, dispatcher.settings)
    api.state.set_faults(Faults(unsuccessful_next=1))  # 200 {"success": false}, nothing taken
    dispatcher.run()
    assert [r["events"] for r in api.state.request_log()] == [3, 1, 1, 1]
    assert api.state.received()["orderids"] == dict.fromkeys(orderids, 1)
    assert set(statuses(engine).values()) == {Status.DELIVERED}


def test_a_partial_answer_to_a_one_event_request_parks_that_event_with_the_reason(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=3)
    seed(engine, ["Q1-1", "Q1-2", "Q1-3"], dispatcher.settings)
    api.state.set_faults(Faults(partial_orderids=["Q1-2"]))
    dispatcher.run()
    result = statuses(engine)
    assert result.pop("Q1-2") == Status.FAILED
    assert set(result.values()) == {Status.DELIVERED}
    parked = row(engine, "Q1-2")
    assert "reported errors" in parked.last_error and parked.attempts == 1
    assert [r["events"] for r in api.state.request_log()] == [3, 1, 1, 1]
    assert "Q1-2" not in api.state.received()["orderids"]


def test_a_row_enqueue_validated_is_sent_as_stored_and_a_plain_sql_row_is_validated_first(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api)
    seed(engine, ["V-1"], dispatcher.settings)
    # The same text for both rows: one validation would change (it upper-cases a country).
    stored = json.dumps(purchase("V-1", country="nl"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_events SET payload = :p WHERE orderid = 'V-1'"),
                     {"p": stored})
    insert_raw(engine, "V-2", stored.replace('"V-1"', '"V-2"'))
    with engine.connect() as conn:
        flags = dict(conn.execute(sa.text(
            "SELECT orderid, validated FROM outbox_events")).all())
    assert {k: bool(v) for k, v in flags.items()} == {"V-1": True, "V-2": False}
    drain(dispatcher)
    assert api.state.events_for("V-1")[0]["country"] == "nl"
    assert api.state.events_for("V-2")[0]["country"] == "NL"


@pytest.mark.parametrize("payload, reason", [
    ("{not json", "payload: not valid JSON"),
    (json.dumps({"event": "Purchase", "orderid": "X-2", "products": []}), "email: is required"),
    (json.dumps(purchase("other")), "orderid: the payload says 'other'"),
    ("[" * 100_000 + "]" * 100_000, "payload: JSON nested too deeply"),
])
def test_a_malformed_row_inserted_with_plain_sql_is_parked_and_the_others_still_go(
    database_url: str, engine: Engine, api: RunningFakeApi, payload: str, reason: str
) -> None:
    dispatcher = make_dispatcher(database_url, api)
    insert_raw(engine, "X-2", payload)
    insert_raw(engine, "X-3", json.dumps(purchase("X-3")))
    dispatcher.run()
    assert row(engine, "X-3").status == Status.DELIVERED
    parked = row(engine, "X-2")
    assert parked.status == Status.FAILED
    assert reason in parked.last_error


def test_an_expired_lease_makes_a_claimed_row_claimable_again_and_the_old_claim_cannot_mark(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    import datetime as dt

    dispatcher = make_dispatcher(database_url, api)
    seed(engine, ["E-1"], dispatcher.settings)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        first = claims.claim_due(conn, limit=10, token="dead-worker", now=now,
                                lease_until=now + dt.timedelta(seconds=0.2))
    assert [r.orderid for r in first] == ["E-1"]
    with engine.begin() as conn:
        assert claims.claim_due(conn, limit=10, token="other", now=now,
                               lease_until=now + dt.timedelta(seconds=10)) == []
    time.sleep(0.3)
    dispatcher.run()
    assert row(engine, "E-1").status == Status.DELIVERED
    with engine.begin() as conn:
        assert claims.mark_delivered(conn, [first[0].id], token="dead-worker",
                                    now=now, http_status=200) == 0


def test_a_claim_whose_lease_passed_cannot_touch_a_row_another_claim_now_holds_in_flight(
    engine: Engine,
) -> None:
    seed_row(engine, "E-2")
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        [old] = claims.claim_due(conn, limit=10, token="old", now=now,
                                 lease_until=now + dt.timedelta(seconds=1))
    later = now + dt.timedelta(seconds=2)  # the old lease has run out: another worker claims
    with engine.begin() as conn:
        [new] = claims.claim_due(conn, limit=10, token="new", now=later,
                                 lease_until=later + dt.timedelta(minutes=2))
    assert new.id == old.id
    # Still in flight, under the new token: every settling statement of the old claim misses.
    with engine.begin() as conn:
        assert claims.mark_delivered(conn, [old.id], token="old", now=later,
                                     http_status=200) == 0
        assert claims.renew(conn, token="old", now=later, lease_until=later) == 0
        assert claims.release(conn, token="old", now=later, note="x", ids=[old.id]) == 0
        claims.schedule_retries(conn, [claims.ScheduledRetry(old.id, later)], token="old",
                                now=later, error="x", http_status=503)
        claims.park(conn, [(old.id, "x")], token="old", now=later)
    held = row(engine, "E-2")
    assert (held.status, held.claim_token, held.attempts) == (Status.IN_FLIGHT, "new", 2)
    # The note is the new claim's (the row was re-taken in flight); the old claim wrote nothing.
    assert held.last_error == claims.RECLAIMED_NOTE and held.delivered_at is None


def test_an_operator_retry_of_an_old_order_gets_a_full_retry_window(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    import datetime as dt

    from spotler_outbox.models import operations

    dispatcher = make_dispatcher(database_url, api, max_age=3600)
    seed(engine, ["OLD-1"], dispatcher.settings)
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_events SET status = 'failed', created_at = :t"),
                     {"t": two_days_ago.replace(tzinfo=None) if engine.dialect.name != "postgresql"
                      else two_days_ago})
        operations.retry_failed(conn, "OLD-1", now=dt.datetime.now(dt.UTC))
    api.state.set_faults(Faults(fail_next=1, error_status=503))
    dispatcher.run(budget_seconds=0)
    assert row(engine, "OLD-1").status == Status.PENDING  # retried, not failed for its age
    drain(dispatcher)
    assert row(engine, "OLD-1").status == Status.DELIVERED


def test_a_403_on_one_payload_while_the_key_works_parks_that_event_instead_of_pausing(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=8)
    seed(engine, [f"W-{i}" for i in range(8)], dispatcher.settings)
    api.state.set_faults(Faults(reject_orderids=["W-3"], reject_status=403))
    report = dispatcher.run()
    assert not report.paused
    result = statuses(engine)
    assert result.pop("W-3") == Status.FAILED
    assert set(result.values()) == {Status.DELIVERED}
    assert "verifyAuth accepts the credentials" in row(engine, "W-3").last_error


def fast_clock(speed: float) -> Callable[[], dt.datetime]:
    """A clock running `speed` times faster than the wall's: leases run out in test time."""
    start, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    return lambda: start + dt.timedelta(seconds=(time.monotonic() - t0) * speed)


def test_a_claim_that_outlasts_its_lease_renews_it_so_no_other_worker_can_take_its_rows(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    # Both workers read a clock 4x the wall's: the 7 s lease lasts 1.75 s of wall time, while
    # halving down to the bad event takes 7 requests of 0.4 s. Only renewal keeps the rows.
    settings = delivery_settings(database_url, api.url, batch_size=8, lease_seconds=7.0,
                                 connect_timeout=0.5, read_timeout=1.5)
    clock = fast_clock(4.0)
    holder, other = (Dispatcher(make_engine(database_url), SpotlerClient(settings), settings,
                                worker_name=name, clock=clock) for name in ("holder", "other"))
    seed(engine, [f"N-{i}" for i in range(8)], settings)
    api.state.set_faults(Faults(reject_orderids=["N-5"], latency_ms=400))
    result: dict[str, DispatchReport] = {}
    running = threading.Thread(target=lambda: result.update(holder=holder.run(budget_seconds=0)))
    running.start()
    while running.is_alive() and not api.state.request_log():
        time.sleep(0.01)  # the holder has claimed every row and sent its first request
    taken_by_other = 0
    while running.is_alive():
        taken_by_other += other.run(budget_seconds=0).claimed
        time.sleep(0.05)
    running.join()
    assert taken_by_other == 0
    assert result["holder"].lost_claims == 0 and result["holder"].requests >= 7
    result_statuses = statuses(engine)
    assert result_statuses.pop("N-5") == Status.FAILED
    assert set(result_statuses.values()) == {Status.DELIVERED}
    assert all(n == 1 for n in api.state.received()["orderids"].values())


def test_an_unexpected_error_before_the_request_hands_every_row_back_without_an_attempt(
    database_url: str, engine: Engine, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher = make_dispatcher(database_url, api)
    seed(engine, ["U-1", "U-2"], dispatcher.settings)

    def explode(*args: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(batch, "unsendable_reason", explode)
    with pytest.raises(RuntimeError):
        dispatcher.run(budget_seconds=0)
    assert api.state.request_log() == []
    for orderid in ("U-1", "U-2"):
        assert row(engine, orderid).status == Status.PENDING
        assert row(engine, orderid).attempts == 0
        assert row(engine, orderid).claim_token is None
        assert "not sent" in row(engine, orderid).last_error


def test_an_unexpected_error_once_the_request_left_keeps_the_rows_claimed_until_their_lease_ends(
    database_url: str, engine: Engine, api: RunningFakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The request may have reached Spotler: never handed back as unsent and due at once, but
    # kept in flight, the attempt counted and the doubt written down, until the lease ends.
    settings = delivery_settings(database_url, api.url, lease_seconds=7.0,
                                 connect_timeout=0.5, read_timeout=1.5)
    dispatcher = Dispatcher(make_engine(database_url), SpotlerClient(settings), settings,
                            clock=fast_clock(4.0))
    seed(engine, ["UL-1", "UL-2"], settings)
    track = dispatcher.client.track_json

    def sent_then_a_bug(events: Any) -> Any:
        track(events)
        raise RuntimeError("a bug after the request")

    monkeypatch.setattr(dispatcher.client, "track_json", sent_then_a_bug)
    with pytest.raises(RuntimeError):
        dispatcher.run(budget_seconds=0)
    for orderid in ("UL-1", "UL-2"):
        kept = row(engine, orderid)
        assert (kept.status, kept.attempts) == (Status.IN_FLIGHT, 1)
        assert kept.claim_token is not None
        assert "sent to Spotler, but its answer could not be recorded" in kept.last_error
    assert dispatcher.run(budget_seconds=0).claimed == 0  # still under its lease
    monkeypatch.undo()
    time.sleep(2.0)  # the 7 s lease on the 4x clock
    drain(dispatcher)
    for orderid in ("UL-1", "UL-2"):
        assert (row(engine, orderid).status, row(engine, orderid).attempts) == (
            Status.DELIVERED, 2)
    assert api.state.received()["orderids"] == {"UL-1": 2, "UL-2": 2}


def test_a_redirect_on_track_pauses_dispatch_parks_nothing_and_everything_goes_once_it_stops(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=8)
    seed(engine, [f"RD-{i}" for i in range(8)], dispatcher.settings)
    api.state.set_faults(Faults(redirect_status=308))  # verifyAuth still answers 200
    report = dispatcher.run()
    assert report.paused and report.failed == 0 and report.requests == 1
    assert set(statuses(engine).values()) == {Status.PENDING}
    assert row(engine, "RD-0").attempts == 0
    assert "308" in (row(engine, "RD-0").last_error or "")
    time.sleep(0.25)
    # verifyAuth accepts the key, so the recheck resumes; the next request tells again.
    assert dispatcher.recheck_credentials() is True
    assert dispatcher.run().paused
    assert set(statuses(engine).values()) == {Status.PENDING}
    api.state.set_faults(Faults())
    time.sleep(0.25)
    assert dispatcher.recheck_credentials() is True
    drain(dispatcher)
    assert set(statuses(engine).values()) == {Status.DELIVERED}
    assert api.state.received()["orderids"] == {f"RD-{i}": 1 for i in range(8)}
    assert [r["status"] for r in api.state.request_log()] == [308, 308, 200]


def test_a_trickling_answer_is_cut_at_the_deadline_so_no_other_claim_sends_the_rows_twice(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    # The lease (7 s) just covers connect + read + margin; the answer would take 12 s, a
    # byte every ~0.2 s, so no single read ever times out.
    timing = {"batch_size": 5, "lease_seconds": 7.0, "connect_timeout": 0.5,
              "read_timeout": 1.0}
    first = make_dispatcher(database_url, api, **timing)
    second = make_dispatcher(database_url, api, **timing)
    seed(engine, [f"TR-{i}" for i in range(5)], first.settings)
    api.state.set_faults(Faults(trickle_next=1, trickle_seconds=12.0))
    outcome: dict[str, object] = {}
    slow = threading.Thread(target=lambda: outcome.update(report=first.run(budget_seconds=0)))
    started = time.monotonic()
    slow.start()
    # The other worker keeps claiming whatever is due, as a busy outbox would.
    while time.monotonic() - started < 14 and not all(
            s == Status.DELIVERED for s in statuses(engine).values()):
        second.run(budget_seconds=0)
        time.sleep(0.2)
    slow.join(20)
    drain(second)
    trickled = [r for r in api.state.request_log() if r.get("trickled")]
    assert len(trickled) == 1
    wait_for_end = time.monotonic() + 15
    while trickled[0]["ended"] is None and time.monotonic() < wait_for_end:
        time.sleep(0.2)
        trickled = [r for r in api.state.request_log() if r.get("trickled")]
    assert trickled[0]["completed"] is False  # the client hung up before the last byte
    assert trickled[0]["ended"] - trickled[0]["at"] < timing["lease_seconds"]
    assert api.state.received()["orderids"] == {f"TR-{i}": 1 for i in range(5)}
    assert set(statuses(engine).values()) == {Status.DELIVERED}
    with engine.connect() as conn:
        errors = [r.outcome for r in conn.execute(sa.select(DeliveryAttempt))]
    assert errors.count("retryable") == 1
