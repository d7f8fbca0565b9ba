"""The settling of one claim: send, split on rejection, and settle every row it holds.

Every row of a claim ends settled (delivered, failed, scheduled for retry) or handed back
without an attempt counted: also when the lease runs short, the claim outlives its time, or
anything unexpected is raised.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from models import store
from models.errors import AuthFailed, DeliveryError, PartialFailure, RateLimited, Rejected
from models.store import AttemptRecord, ClaimedRow, Retry
from worker.client import Accepted

if TYPE_CHECKING:
    from worker.dispatch import Dispatcher

log = logging.getLogger("spotler_outbox.dispatch")

Clock = Callable[[], dt.datetime]
Item = tuple[ClaimedRow, dict[str, Any]]
LEASE_MARGIN_SECONDS = 5.0
HALVES, SINGLES = "halves", "singles"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class DispatchReport:
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    requests: int = 0
    lost_claims: int = 0
    paused: bool = False
    held: bool = False
    budget_spent: bool = False
    batches: int = 0

    def add(self, other: DispatchReport) -> None:
        for name in ("claimed", "delivered", "retried", "failed", "released", "requests",
                     "lost_claims", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.paused = self.paused or other.paused
        self.held = self.held or other.held


class Claim:
    def __init__(self, dispatcher: Dispatcher, token: str, lease_until: dt.datetime,
                 report: DispatchReport, ids: Iterable[int]) -> None:
        self.d = dispatcher
        self.token = token
        self.lease_until = lease_until
        self.report = report
        self.unsettled = set(ids)
        # A claim may take its lease's length, then what is left goes back: this bounds a
        # task's run far below Celery's hard time limit, whatever the splits cost.
        self.deadline = time.monotonic() + dispatcher.settings.lease_seconds
        self.halted = False  # auth failure, rate limit or a lost lease: the rest goes back
        self._credentials_work: bool | None = None

    def settle(self, prepare: Callable[[], list[Item]]) -> None:
        """Send what `prepare` returns; whatever happens, no row stays claimed for nothing."""
        try:
            items = prepare()
            if items:
                self.deliver(items)
        except BaseException:
            self._hand_back("not sent: the worker hit an unexpected error")
            raise

    def settled(self, ids: Iterable[int]) -> None:
        self.unsettled.difference_update(ids)

    def deliver(self, items: list[Item]) -> None:
        if self.halted or time.monotonic() > self.deadline:
            self._hand_back("not sent: the claim ran out of time or was halted; due again now")
            return
        if not self._lease_covers_a_request():
            return
        started = self.d.clock()
        t0 = time.perf_counter()
        error: DeliveryError | None = None
        accepted: Accepted | None = None
        try:
            accepted = self.d.client.track([event for _, event in items])
        except DeliveryError as e:
            error = e
        duration_ms = round((time.perf_counter() - t0) * 1000)
        self.report.requests += 1
        if isinstance(error, AuthFailed) and self._one_event_refused_not_the_key():
            error = Rejected(f"{error} although verifyAuth accepts the credentials: something "
                             "in the event is refused", http_status=error.http_status,
                             excerpt=error.excerpt)
        split = self._settle(items, started, duration_ms, accepted, error)
        if split == HALVES:
            middle = len(items) // 2
            self.deliver(items[:middle])
            self.deliver(items[middle:])
        elif split == SINGLES:
            for item in items:
                self.deliver([item])

    def _one_event_refused_not_the_key(self) -> bool:
        """A 401/403 on track while verifyAuth passes is a payload a proxy or WAF refuses:
        treating it as bad credentials would pause everything, resume, and loop forever."""
        if self._credentials_work is None:
            try:
                self.d.client.verify_auth()
            except DeliveryError:
                self._credentials_work = False
            else:
                self._credentials_work = True
        return self._credentials_work

    def _lease_covers_a_request(self) -> bool:
        now = self.d.clock()
        settings = self.d.settings
        needed = settings.connect_timeout + settings.read_timeout + LEASE_MARGIN_SECONDS
        if (self.lease_until - now).total_seconds() >= needed:
            return True
        lease_until = now + dt.timedelta(seconds=settings.lease_seconds)
        with self.d.engine.begin() as conn:
            held = store.renew_claim(conn, token=self.token, now=now, lease_until=lease_until)
        if held == len(self.unsettled):
            self.lease_until = lease_until
            return True
        # Another worker may hold some of them now: sending would risk a duplicate.
        self.report.lost_claims += len(self.unsettled) - held
        log.warning("lost the claim on %d of %d rows before sending; handing the rest back",
                    len(self.unsettled) - held, len(self.unsettled))
        self._hand_back("not sent: part of the claim was lost; due again now")
        return False

    def _hand_back(self, note: str) -> None:
        if not self.unsettled:
            return
        self.halted = True
        with self.d.engine.begin() as conn:
            released = store.release_claim(conn, token=self.token, now=self.d.clock(),
                                           note=note)
        self.report.released += released
        self.unsettled.clear()

    def _settle(self, items: list[Item], started: dt.datetime, duration_ms: int,
                accepted: Accepted | None, error: DeliveryError | None) -> str | None:
        """Record the attempt and settle the rows; says how to split when they must be."""
        rows = [row for row, _ in items]
        ids = [row.id for row in rows]
        now = self.d.clock()
        status = accepted.http_status if accepted else (error.http_status if error else None)
        outcome = "delivered" if error is None else _outcome_name(error)
        record = AttemptRecord(
            started_at=started, duration_ms=duration_ms, event_count=len(rows),
            http_status=status, outcome=outcome,
            error_class=type(error).__name__ if error else None,
            response_excerpt=(accepted.excerpt if accepted else error.excerpt if error else None),
            worker=self.d.worker_name,
        )

        def write(conn: sa.Connection, delta: DispatchReport) -> str | None:
            store.record_attempt(conn, record, rows)
            if error is None:
                marked = store.mark_delivered(conn, ids, token=self.token, now=now,
                                              http_status=status)
                delta.delivered += marked
                delta.lost_claims += len(ids) - marked
            elif isinstance(error, AuthFailed):
                check_at = now + dt.timedelta(seconds=self.d.settings.auth_recheck_interval)
                store.pause(conn, reason=str(error), now=now, check_at=check_at)
                store.release(conn, ids, token=self.token, now=now, not_before=now,
                              note=f"not sent: dispatch paused ({error})")
                delta.released += len(ids)
                delta.paused = True
            elif isinstance(error, RateLimited):
                wait = self.d.policy.bounded_retry_after(error.retry_after)
                if wait is None:
                    wait = self.d.policy.delay(1, self.d.jitter) + 1.0
                not_before = now + dt.timedelta(seconds=wait)
                store.hold_until(conn, now=now, not_before=not_before)
                store.release(conn, ids, token=self.token, now=now, not_before=not_before,
                              note=str(error))
                delta.released += len(ids)
                delta.held = True
            elif isinstance(error, Rejected | PartialFailure) and len(items) > 1:
                # A rejected batch is halved until the bad event is found. After a partial
                # 2xx we cannot tell which events were taken: each is sent once more alone,
                # never again in a batch, so a repeat Spotler must merge happens at most once.
                return SINGLES if isinstance(error, PartialFailure) else HALVES
            elif isinstance(error, Rejected | PartialFailure):
                store.mark_failed(conn, ids, token=self.token, now=now, error=str(error),
                                  http_status=status)
                delta.failed += 1
            else:
                self._schedule_retries(conn, rows, now, error, delta)
            return None

        split, delta = self._write_outcome(write)
        self.report.add(delta)
        if split is None:
            self.settled(ids)
        if delta.paused or delta.held:
            self.halted = True
        if delta.lost_claims:
            log.error("%d rows were sent but their claim had passed to another worker",
                      delta.lost_claims)
        if delta.failed and isinstance(error, Rejected | PartialFailure):
            log.error("parked orderid %s as failed: %s", rows[0].orderid, error)
        level = logging.INFO if outcome == "delivered" else logging.WARNING
        log.log(level, "batch of %d events: %s, HTTP %s, %d ms", len(rows), outcome,
                status if status is not None else "-", duration_ms)
        return split

    def _write_outcome(
        self, write: Callable[[sa.Connection, DispatchReport], str | None]
    ) -> tuple[str | None, DispatchReport]:
        """Commit what Spotler answered, retrying through a database outage.

        The answer is known and only the database is missing: giving up now would leave the
        rows to be claimed and sent again when their lease runs out, so keep trying until
        shortly before the lease does.
        """
        pause = 0.1
        while True:
            delta = DispatchReport()
            try:
                with self.d.engine.begin() as conn:
                    return write(conn, delta), delta
            except sa.exc.OperationalError as e:
                left = (self.lease_until - self.d.clock()).total_seconds() - LEASE_MARGIN_SECONDS
                if left <= pause:
                    log.error("could not record Spotler's answer before the lease ran out: %s",
                              type(e).__name__)
                    raise
                log.warning("database unavailable while recording Spotler's answer (%s); "
                            "retrying in %.1fs", type(e).__name__, pause)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _schedule_retries(self, conn: sa.Connection, rows: list[ClaimedRow], now: dt.datetime,
                          error: DeliveryError, delta: DispatchReport) -> None:
        retry_after = getattr(error, "retry_after", None)
        retries: list[Retry] = []
        exhausted: list[int] = []
        for row in rows:
            at = self.d.policy.next_attempt(attempts=row.attempts, since=row.retry_window_start,
                                            now=now, retry_after=retry_after,
                                            jitter=self.d.jitter)
            if at is None:
                exhausted.append(row.id)
            else:
                retries.append(Retry(row.id, at))
        store.schedule_retries(conn, retries, token=self.token, now=now, error=str(error),
                               http_status=error.http_status)
        store.mark_failed(conn, exhausted, token=self.token, now=now,
                          error=f"gave up after the last attempt: {error}",
                          http_status=error.http_status)
        delta.retried += len(retries)
        delta.failed += len(exhausted)
        if exhausted:
            log.error("%d rows failed for good after their last attempt: %s", len(exhausted),
                      error)


def _outcome_name(error: DeliveryError) -> str:
    names = {AuthFailed: "auth_failed", RateLimited: "rate_limited", Rejected: "rejected",
             PartialFailure: "partial"}
    for cls, name in names.items():
        if isinstance(error, cls):
            return name
    return "retryable"
