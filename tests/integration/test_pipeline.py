"""The pipelined dispatch loop: the next batch is claimed while a request is in flight.

The oracles are the database's own rows (how many are in flight, under which note they came
back) and the fake API's log of the requests it answered, never a duration.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.models.tables import Status
from spotler_outbox.worker.dispatch import Dispatcher, DispatchReport
from spotler_outbox.worker.dispatch.batch import Turn
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi
from tests.integration.fixtures import row, seed, statuses
from tests.integration.test_dispatch import make_dispatcher

# Long enough that a claim made ahead may wait out a whole request (2 x (1 + 2) s + 5 s).
PIPELINED = {"lease_seconds": 20.0}


def in_flight(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM outbox_events WHERE status = 'in_flight'")).scalar_one())


def wait_until(condition: Callable[[], bool], seconds: float = 20) -> bool:
    """Poll `condition`; False if it never held (a bound on failing, not a speed claim)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return False


@contextmanager
def running(dispatcher: Dispatcher) -> Iterator[list[DispatchReport]]:
    reports: list[DispatchReport] = []
    thread = threading.Thread(target=lambda: reports.append(dispatcher.run(budget_seconds=30)))
    thread.start()
    try:
        yield reports
    finally:
        thread.join(60)


def test_the_next_batch_is_claimed_while_the_request_before_it_waits_for_its_answer(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=3, **PIPELINED)
    orderids = [f"PP-{i}" for i in range(9)]
    seed(engine, orderids, dispatcher.settings)
    api.state.set_faults(Faults(latency_ms=800))
    with running(dispatcher) as reports:
        # Two batches held while the fake API has answered nothing yet: the second was
        # claimed during the first request.
        ahead = wait_until(lambda: in_flight(engine) == 6 and not api.state.request_log())
    assert ahead, "no batch was claimed while the first request was in flight"
    assert reports[0].delivered == 9 and reports[0].requests == 3
    assert api.state.received()["orderids"] == dict.fromkeys(orderids, 1)
    assert set(statuses(engine).values()) == {Status.DELIVERED}


def test_a_batch_claimed_ahead_is_handed_back_unsent_when_the_worker_is_asked_to_stop(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=3, **PIPELINED)
    seed(engine, [f"PS-{i}" for i in range(9)], dispatcher.settings)
    api.state.set_faults(Faults(latency_ms=800))
    with running(dispatcher) as reports:
        assert wait_until(lambda: in_flight(engine) == 6 and not api.state.request_log())
        dispatcher.stopping.set()  # SIGTERM: the request in flight ends, nothing new starts
    report = reports[0]
    assert (report.delivered, report.released, report.requests) == (3, 3, 1)
    assert len(api.state.received()["orderids"]) == 3
    back = [o for o, s in statuses(engine).items() if s == Status.PENDING]
    assert len(back) == 6
    handed_back = [row(engine, o) for o in back if row(engine, o).last_error]
    assert len(handed_back) == 3
    for r in handed_back:
        assert "the worker is stopping" in r.last_error
        assert r.attempts == 0 and r.claim_token is None


def test_a_429_to_one_request_makes_the_batch_claimed_ahead_go_back_unsent(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    dispatcher = make_dispatcher(database_url, api, batch_size=3, **PIPELINED)
    seed(engine, [f"PH-{i}" for i in range(6)], dispatcher.settings)
    api.state.set_faults(Faults(rate_limit_seconds=30, latency_ms=300))
    with running(dispatcher) as reports:
        pass
    report = reports[0]
    assert report.rate_limited and report.requests == 1
    assert [r["status"] for r in api.state.request_log()] == [429]
    assert set(statuses(engine).values()) == {Status.PENDING}
    notes = [row(engine, f"PH-{i}").last_error or "" for i in range(6)]
    assert sum("halted by the answer to the request before it" in n for n in notes) == 3
    assert all(row(engine, f"PH-{i}").attempts == 0 for i in range(6))


def test_a_claim_made_ahead_gives_its_rows_back_before_its_lease_runs_out_if_kept_waiting(
    database_url: str, engine: Engine, api: RunningFakeApi
) -> None:
    # lease 9 s, a request needs 1 + 2 + 5 s of it: kept waiting over 1 s, it must give up.
    dispatcher = make_dispatcher(database_url, api, batch_size=2, lease_seconds=9.0)
    seed(engine, ["PW-1", "PW-2"], dispatcher.settings)
    never_answered = Turn("")
    claim = dispatcher.claim_next(after=never_answered)
    assert claim is not None
    claim.send_all()
    assert api.state.request_log() == []
    for orderid in ("PW-1", "PW-2"):
        back = row(engine, orderid)
        assert back.status == Status.PENDING and back.attempts == 0
        assert "the request before it took too long" in back.last_error
        # Handed back while the lease still held: no other worker could have claimed them.
        assert back.updated_at < claim.ledger.lease_until - dt.timedelta(seconds=7)
