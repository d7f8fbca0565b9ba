"""The table of settlements: what each decision does to the rows of its request, written by
hand for a fixed clock and jitter, and the turn a claim hands to the one claimed after it."""

from __future__ import annotations

import datetime as dt

import pytest

from spotler_outbox.models.claims import AttemptRecord, ClaimedRow, ScheduledRetry
from spotler_outbox.models.ledger import Settlement
from spotler_outbox.worker.dispatch.batch import Outcome, Turn
from spotler_outbox.worker.dispatch.decide import Act, Decision
from spotler_outbox.worker.dispatch.retry_policy import RetryPolicy
from spotler_outbox.worker.dispatch.settle import settlement_for

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
CREATED = NOW - dt.timedelta(minutes=5)
# base 10 s, cap 100 s, 3 attempts, a day's window, Retry-After honoured up to 60 s
POLICY = RetryPolicy(base=10.0, cap=100.0, max_attempts=3, max_age=86400.0,
                     retry_after_cap=60.0)
FIRST = ClaimedRow(1, "A-1", "{}", 1, CREATED)  # its first attempt
LAST = ClaimedRow(2, "A-2", "{}", 3, CREATED)  # its third and last
RECORD = AttemptRecord(NOW, 120, 2, 503, "retryable", "RetryableError", "", "w")


def settle(decision: Decision) -> Settlement:
    return settlement_for(decision, [FIRST, LAST], RECORD, policy=POLICY,
                          auth_recheck_seconds=60.0, now=NOW, jitter=lambda: 0.5)


def after(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


# decision -> the settlement, every field spelled out by hand
TABLE: list[tuple[Decision, Settlement]] = [
    (Decision(Act.DELIVER, "delivered"), Settlement(RECORD, [FIRST, LAST], delivered=True)),
    # Retried: jitter 0.5 of min(cap, base * 2^(attempts - 1)): 5 s for a first attempt; the
    # row on its last attempt is parked instead.
    (Decision(Act.RETRY, "retryable", "HTTP 503"),
     Settlement(RECORD, [FIRST, LAST], error="HTTP 503",
                retries=[ScheduledRetry(1, after(5))],
                parked=[(2, "gave up after the last attempt: HTTP 503")])),
    # A Retry-After longer than the backoff wins, bounded by its cap (60 s).
    (Decision(Act.RETRY, "retryable", "HTTP 503", retry_after=3600.0),
     Settlement(RECORD, [FIRST, LAST], error="HTTP 503",
                retries=[ScheduledRetry(1, after(60))],
                parked=[(2, "gave up after the last attempt: HTTP 503")])),
    (Decision(Act.PARK, "rejected", "HTTP 400: bad sku"),
     Settlement(RECORD, [FIRST, LAST], parked=[(1, "HTTP 400: bad sku"),
                                               (2, "HTTP 400: bad sku")])),
    # Refused for the account: back without an attempt, the account paused until verifyAuth
    # passes (asked again in 60 s) or held until Retry-After has passed.
    (Decision(Act.PAUSE, "auth_failed", "HTTP 401"),
     Settlement(RECORD, [FIRST, LAST], pause=("HTTP 401", after(60)),
                refused_note="refused for the account: dispatch paused (HTTP 401)")),
    (Decision(Act.HOLD, "rate_limited", "HTTP 429", retry_after=7.0),
     Settlement(RECORD, [FIRST, LAST], hold_until=after(7), refused_note="HTTP 429",
                due_again_at=after(7))),
    (Decision(Act.HOLD, "rate_limited", "HTTP 429", retry_after=3600.0),
     Settlement(RECORD, [FIRST, LAST], hold_until=after(60), refused_note="HTTP 429",
                due_again_at=after(60))),
    # No Retry-After: a first backoff step (jitter 0.5 of 10 s) and a second more.
    (Decision(Act.HOLD, "rate_limited", "HTTP 429"),
     Settlement(RECORD, [FIRST, LAST], hold_until=after(6), refused_note="HTTP 429",
                due_again_at=after(6))),
    (Decision(Act.HALVE, "rejected", "HTTP 400"), Settlement(RECORD, [FIRST, LAST], split=True)),
    (Decision(Act.EACH_ALONE, "partial", "counted 1 of 2"),
     Settlement(RECORD, [FIRST, LAST], split=True)),
]


@pytest.mark.parametrize(("decision", "expected"), TABLE,
                         ids=[f"{d.act.value}-{i}" for i, (d, _) in enumerate(TABLE)])
def test_each_decision_settles_the_rows_of_its_request_as_the_table_says(
    decision: Decision, expected: Settlement
) -> None:
    assert settle(decision) == expected


def test_a_decision_to_verify_the_credentials_cannot_be_settled_before_it_is_resolved() -> None:
    with pytest.raises(ValueError, match="resolved first"):
        settle(Decision(Act.VERIFY_CREDENTIALS, "auth_failed"))


@pytest.mark.parametrize(("outcome", "same_account", "other_account"), [
    (Outcome.SETTLED, False, False),
    (Outcome.SPLIT, False, False),
    (Outcome.HANDED_BACK, False, False),
    (Outcome.HALTED, True, False),  # a pause or a hold stops its own account only
    (Outcome.CRASHED, True, True),  # a crash stops this worker's next claim whatever its account
])
def test_a_turn_forbids_the_next_claim_to_send_only_after_a_halt_of_its_account_or_a_crash(
    outcome: Outcome, same_account: bool, other_account: bool
) -> None:
    turn = Turn("shop-nl")
    assert not turn.wait(0)
    turn.give(outcome)
    turn.give(Outcome.SETTLED)  # the first answer given is the one that counts
    assert turn.wait(0)
    assert (turn.forbids("shop-nl"), turn.forbids("shop-be")) == (same_account, other_account)
