"""The one place a decision about Spotler's answer becomes what the outbox records: a
Settlement value, which the claim's ledger writes with the attempt (models.ledger).

Pure: the table of cases is tests/unit/test_settle.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from spotler_outbox.models.claims import AttemptRecord, ClaimedRow
from spotler_outbox.models.ledger import Settlement
from spotler_outbox.worker.dispatch.decide import Act, Decision
from spotler_outbox.worker.dispatch.retry_policy import Jitter, RetryPolicy


def settlement_for(
    decision: Decision, rows: Sequence[ClaimedRow], record: AttemptRecord, *,
    policy: RetryPolicy, auth_recheck_seconds: float, now: dt.datetime, jitter: Jitter,
) -> Settlement:
    """What `decision` does to the rows of the request it answers."""
    reason = decision.reason or decision.outcome
    match decision.act:
        case Act.DELIVER:
            return Settlement(record, rows, delivered=True)
        case Act.PAUSE:
            check_at = now + dt.timedelta(seconds=auth_recheck_seconds)
            return Settlement(record, rows, pause=(reason, check_at),
                              refused_note=f"refused for the account: dispatch paused ({reason})")
        case Act.HOLD:
            hold_until = now + dt.timedelta(
                seconds=policy.hold_seconds(decision.retry_after, jitter))
            return Settlement(record, rows, hold_until=hold_until, refused_note=reason,
                              due_again_at=hold_until)
        case Act.PARK:
            return Settlement(record, rows, parked=[(row.id, reason) for row in rows])
        case Act.RETRY:
            retries, exhausted = policy.plan_retries(
                rows, now=now, retry_after=decision.retry_after, jitter=jitter)
            return Settlement(record, rows, error=reason, retries=retries, parked=[
                (row_id, f"gave up after the last attempt: {reason}") for row_id in exhausted])
        case Act.HALVE | Act.EACH_ALONE:
            return Settlement(record, rows, split=True)
        case Act.VERIFY_CREDENTIALS:
            raise ValueError("a decision to verify the credentials must be resolved first")
