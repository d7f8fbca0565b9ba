"""The rows one claim holds, from the claim to their end: every transaction on them.

A claim token binds the rows to one worker until their lease runs out; every write here names
the token, so a worker whose lease passed changes nothing another worker has claimed since.
The worker's dispatch code opens no transaction of its own: it asks its ledger.

Once a request has left for Spotler its rows are never handed back as unsent. They end by the
answer recorded here (`settle`, which waits out a database outage or a node turned read-only),
or, when even that fails, stay claimed until their lease runs out, with the uncertainty in
`last_error`; the claim that takes them again says so too (models.claims).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.models import claims, control
from spotler_outbox.models.claims import AttemptRecord, ClaimedRow, ScheduledRetry
from spotler_outbox.models.clock import Clock
from spotler_outbox.models.errors import AnswerNotRecorded, first_line

log = logging.getLogger("spotler_outbox.dispatch")

# Longest pause between two tries to record an answer: once the database is back, another
# worker may claim the rows as soon as their lease has run out.
RECORD_RETRY_CAP_SECONDS = 1.0
BUDGET_HEADROOM = 1.1
# Written in last_error of a row handed back after a request carried it (a partial answer or
# a rejection that split the batch), so no row whose request left reads as never sent.
CARRIED_NOTE = "sent in a batch this claim split after Spotler's answer, not yet sent again"


@dataclass(frozen=True)
class Settlement:
    """What one answer from Spotler does to the rows its request carried: a plain value that
    the dispatch code builds from its decision, written here with the attempt, all or nothing."""

    record: AttemptRecord
    rows: Sequence[ClaimedRow]
    error: str | None = None  # last_error of retried rows
    delivered: bool = False  # mark every row delivered
    retries: Sequence[ScheduledRetry] = ()
    parked: Sequence[tuple[int, str]] = ()  # (row id, reason)
    # Refused for the account, not for the rows (credentials, a redirect, a 429): every row
    # back to pending with this note and no attempt counted, due again at `due_again_at`.
    refused_note: str | None = None
    due_again_at: dt.datetime | None = None
    pause: tuple[str, dt.datetime] | None = None  # (reason, next credentials check)
    hold_until: dt.datetime | None = None
    split: bool = False  # the rows stay claimed: their parts are sent next


@dataclass
class Settled:
    """What writing a settlement did (a lost claim: a row another worker holds now)."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    lost_claims: int = 0
    paused: bool = False
    rate_limited: bool = False


class Ledger:
    """The rows of one claim token still held by this worker, and every write on them."""

    def __init__(self, engine: Engine, clock: Clock, *, account: str, token: str,
                 lease_seconds: float, lease_until: dt.datetime,
                 rows: Sequence[ClaimedRow]) -> None:
        self.engine = engine
        self.clock = clock
        self.account = account
        self.token = token
        self.lease_seconds = lease_seconds
        self.lease_until = lease_until
        self.rows = list(rows)
        self.held = {row.id for row in rows}
        self.awaiting_answer: set[int] = set()  # their request left; its answer not recorded
        # Carried by a request whose answer split the batch (recorded): not "unsent" any more.
        self.carried: set[int] = set()
        self.released = 0  # handed back to pending
        self.lost = 0  # another worker claimed them since (their lease had run out)

    @classmethod
    def claim(cls, engine: Engine, clock: Clock, *, accounts: Iterable[str], limit: int,
              lease_seconds: float) -> Ledger | None:
        """Claim up to `limit` due rows of the first of `accounts` that has any."""
        now = clock()
        token = uuid.uuid4().hex
        lease_until = now + dt.timedelta(seconds=lease_seconds)
        with engine.begin() as conn:
            for account in accounts:
                rows = claims.claim_due(conn, limit=limit, token=token, now=now,
                                        lease_until=lease_until, account=account)
                if rows:
                    return cls(engine, clock, account=account, token=token, rows=rows,
                               lease_seconds=lease_seconds, lease_until=lease_until)
        return None

    def lease_left(self) -> float:
        return (self.lease_until - self.clock()).total_seconds()

    def renew_for(self, seconds: float) -> bool:
        """Make the lease cover `seconds` more. False: part of the claim was lost meanwhile
        (another worker may hold it now), and every row not sent was handed back."""
        if self.lease_left() >= seconds:
            return True
        now = self.clock()
        lease_until = now + dt.timedelta(seconds=self.lease_seconds)
        with self.engine.begin() as conn:
            still_ours = claims.renew(conn, token=self.token, now=now, lease_until=lease_until)
        if still_ours == len(self.held):
            self.lease_until = lease_until
            return True
        lost = len(self.held) - still_ours
        self.lost += lost
        log.warning("lost the claim on %d of %d rows before sending; handing the rest back",
                    lost, len(self.held))
        self.hand_back("not sent: part of the claim was lost; due again now")
        return False

    def park_unsendable(self, reasons: Sequence[tuple[int, str]]) -> None:
        """Park rows found unsendable before any request: failed, each with its reason."""
        if not reasons:
            return
        with self.engine.begin() as conn:
            claims.park(conn, reasons, token=self.token, now=self.clock())
        self.held.difference_update(row_id for row_id, _ in reasons)

    def hand_back(self, note: str) -> int:
        """Every held row not awaiting an answer back to pending, due now: no attempt counted
        unless a split batch carried it. Rows awaiting their answer stay claimed: they may
        have reached Spotler."""
        unsent = sorted(self.held - self.awaiting_answer)
        if not unsent:
            return 0
        with self.engine.begin() as conn:
            released = self._release(conn, unsent, note=note, now=self.clock())
        self.held.difference_update(unsent)
        self.released += released
        return released

    def wait_for_request_slot(self, max_per_second: float, give_up_at: float) -> bool:
        """Take a slot of the account's request budget, shared with every worker through its
        control row, waiting for one until time.monotonic() reaches `give_up_at`. False: none
        came in time, and every row not sent was handed back."""
        if not max_per_second:
            return True
        # Requests start BUDGET_HEADROOM/rate apart: network jitter between the start here and
        # the arrival at Spotler cannot squeeze one more into any second.
        interval = BUDGET_HEADROOM / max_per_second
        while True:
            now = self.clock()
            with self.engine.begin() as conn:
                free_at = control.take_request_slot(conn, account=self.account, now=now,
                                                    interval=interval)
            if free_at is None:
                return True
            if time.monotonic() > give_up_at:
                self.hand_back("not sent: the account's request budget left no slot before "
                               "the claim ran out of time; due again now")
                return False
            time.sleep(min(max((free_at - now).total_seconds(), 0.005), 1.0))

    def sending(self, rows: Iterable[ClaimedRow]) -> None:
        """Their request is about to leave: from now on they are never handed back unsent."""
        self.awaiting_answer.update(row.id for row in rows)

    def settle(self, settlement: Settlement) -> Settled:
        """Record the attempt and what the answer does to its rows, in one transaction.

        The answer is known; only the database may be missing (an outage, a failover's
        read-only node, a pooler's lost prepared statement). Giving up would leave the rows to
        be sent again, so keep trying until one lease after the lease: the writes name the
        token, so a try after another worker claimed the rows changes nothing of theirs.
        Raises AnswerNotRecorded when even that fails (the rows then keep their claim).
        """
        give_up_at = self.lease_until + dt.timedelta(seconds=self.lease_seconds)
        failing_since: float | None = None
        pause = 0.1
        while True:
            try:
                with self.engine.begin() as conn:
                    settled = self._write(conn, settlement, self.clock())
                break
            except sa.exc.DBAPIError as e:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("could not record Spotler's answer for %d rows (%s: %s); "
                                "retrying until %s", len(settlement.rows), type(e).__name__,
                                first_line(e), give_up_at.isoformat(timespec="seconds"))
                if self.clock() + dt.timedelta(seconds=pause) > give_up_at:
                    raise AnswerNotRecorded(
                        f"Spotler's answer for {len(settlement.rows)} rows could not be "
                        f"recorded: {type(e).__name__}") from e
                time.sleep(pause)
                pause = min(pause * 2, RECORD_RETRY_CAP_SECONDS)
        if failing_since is not None:
            log.warning("recorded Spotler's answer for %d rows after %.1f s", len(settlement.rows),
                        time.monotonic() - failing_since)
        ids = {row.id for row in settlement.rows}
        self.awaiting_answer.difference_update(ids)
        if settlement.split:
            self.carried.update(ids)
        else:
            self.held.difference_update(ids)
        if settled.lost_claims:
            log.error("%d rows were sent but their claim had passed to another worker",
                      settled.lost_claims)
        self.lost += settled.lost_claims
        self.released += settled.released
        return settled

    def _write(self, conn: sa.Connection, s: Settlement, now: dt.datetime) -> Settled:
        claims.record_attempt(conn, s.record, s.rows)
        ids = [row.id for row in s.rows]
        status = s.record.http_status
        done = Settled()
        if s.delivered:
            done.delivered = claims.mark_delivered(conn, ids, token=self.token, now=now,
                                                   http_status=status)
            done.lost_claims = len(ids) - done.delivered
        if s.pause is not None:
            reason, check_at = s.pause
            control.pause(conn, reason=reason, now=now, check_at=check_at, account=self.account)
            done.paused = True
        if s.hold_until is not None:
            control.hold_until(conn, now=now, not_before=s.hold_until, account=self.account)
            done.rate_limited = True
        if s.refused_note is not None:
            done.released = self._release(conn, ids, note=s.refused_note, now=now,
                                          not_before=s.due_again_at)
        if s.retries:
            claims.schedule_retries(conn, s.retries, token=self.token, now=now,
                                    error=s.error or "", http_status=status)
            done.retried = len(s.retries)
        if s.parked:
            claims.park(conn, s.parked, token=self.token, now=now, http_status=status)
            done.failed = len(s.parked)
        return done

    def _release(self, conn: sa.Connection, ids: Sequence[int], *, note: str,
                 now: dt.datetime, not_before: dt.datetime | None = None) -> int:
        """Back to pending. A row an earlier request of this claim carried keeps the attempt
        counted and says so: that request reached Spotler, whatever its answer was."""
        fresh = [i for i in ids if i not in self.carried]
        carried = [i for i in ids if i in self.carried]
        released = claims.release(conn, token=self.token, now=now, ids=fresh, note=note,
                                  not_before=not_before)
        return released + claims.release(
            conn, token=self.token, now=now, ids=carried, not_before=not_before,
            note=f"{CARRIED_NOTE}: {note.removeprefix('not sent: ')}", attempt_counted=True)

    def abandon(self, error: BaseException) -> int:
        """After an unexpected error: rows never sent go back (no attempt counted); rows whose
        request left keep their claim until the lease runs out, with the uncertainty noted.
        Returns how many were handed back."""
        try:
            released = self.hand_back("not sent: the worker hit an unexpected error; due again "
                                      "now")
        except sa.exc.DBAPIError as e:
            # They come back when their lease runs out, noted by the claim that takes them.
            log.error("could not hand back the rows not sent (%s)", type(e).__name__)
            released = 0
        sent = sorted(self.awaiting_answer & self.held)
        if sent:
            note = (f"sent to Spotler, but its answer could not be recorded "
                    f"({type(error).__name__}): goes again once the lease runs out; Spotler "
                    "merges a repeat on orderid")
            log.error("%d rows were sent but their answer is not recorded (%s); they go again "
                      "after their lease", len(sent), type(error).__name__)
            try:
                with self.engine.begin() as conn:
                    claims.note_unanswered(conn, sent, token=self.token, now=self.clock(),
                                           note=note)
            except sa.exc.DBAPIError as e:
                # The claim that takes them again notes it instead (models.claims).
                log.error("could not note that either (%s)", type(e).__name__)
            self.held.difference_update(sent)
        return released

