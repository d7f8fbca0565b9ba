"""The one place a decision about Spotler's answer becomes SQL on the outbox.

Called inside the transaction that records the attempt: the attempt row and what it did to
the outbox rows commit together, or not at all.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

import sqlalchemy as sa

from spotler_outbox.models import claims, control
from spotler_outbox.models.claims import AttemptRecord, ClaimedRow
from spotler_outbox.worker.dispatch.context import DispatchContext, DispatchReport
from spotler_outbox.worker.dispatch.decide import Act, Decision

log = logging.getLogger("spotler_outbox.dispatch")


def write_answer(
    conn: sa.Connection, ctx: DispatchContext, *, token: str, rows: Sequence[ClaimedRow],
    decision: Decision, record: AttemptRecord, now: dt.datetime,
) -> DispatchReport:
    """Record the attempt and carry out `decision` on the rows it carried."""
    claims.record_attempt(conn, record, rows)
    done = DispatchReport()
    ids = [row.id for row in rows]
    reason = decision.reason or decision.outcome
    status = record.http_status
    match decision.act:
        case Act.DELIVER:
            marked = claims.mark_delivered(conn, ids, token=token, now=now, http_status=status)
            done.delivered += marked
            done.lost_claims += len(ids) - marked
        case Act.PAUSE:
            check_at = now + dt.timedelta(seconds=ctx.settings.auth_recheck_interval)
            control.pause(conn, reason=reason, now=now, check_at=check_at, account=ctx.account)
            done.released += claims.release(conn, token=token, now=now, ids=ids,
                                            note=f"not sent: dispatch paused ({reason})")
            done.paused = True
        case Act.HOLD:
            wait = ctx.policy.hold_seconds(decision.retry_after, ctx.jitter)
            not_before = now + dt.timedelta(seconds=wait)
            control.hold_until(conn, now=now, not_before=not_before, account=ctx.account)
            done.released += claims.release(conn, token=token, now=now, ids=ids,
                                            not_before=not_before, note=reason)
            done.rate_limited = True
        case Act.PARK:
            claims.park(conn, [(row_id, reason) for row_id in ids], token=token, now=now,
                        http_status=status)
            done.failed += len(ids)
        case Act.RETRY:
            retries, exhausted = ctx.policy.plan_retries(
                rows, now=now, retry_after=decision.retry_after, jitter=ctx.jitter)
            claims.schedule_retries(conn, retries, token=token, now=now, error=reason,
                                    http_status=status)
            claims.park(conn, [(row_id, f"gave up after the last attempt: {reason}")
                               for row_id in exhausted], token=token, now=now, http_status=status)
            done.retried += len(retries)
            done.failed += len(exhausted)
        case Act.HALVE | Act.EACH_ALONE:
            pass  # the rows stay claimed: the claim sends the parts next
        case Act.VERIFY_CREDENTIALS:
            raise ValueError("a decision to verify the credentials must be resolved first")
    return done
