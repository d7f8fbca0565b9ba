"""Claim due rows, send them to Spotler, and settle each row: plain functions, no Celery.

Exactly once rests on three things: a row is sent only while this worker holds its claim
token and lease; the lease is renewed before any request that could outlive it; and a row is
marked delivered in the same transaction that records the attempt. The one window no client
can close is a crash after Spotler's 2xx and before that commit: the row is then sent again
after its lease expires, and Spotler's merge on orderid absorbs the repeat.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models import store
from models.errors import (
    AuthFailed,
    DeliveryError,
    InvalidEvent,
    PartialFailure,
    RateLimited,
    Rejected,
)
from models.settings import Settings
from models.store import AttemptRecord, ClaimedRow, Retry
from models.validation import validate_purchase
from worker.client import Accepted, SpotlerClient
from worker.retry_policy import Jitter, RetryPolicy

log = logging.getLogger("spotler_outbox.dispatch")

Clock = Callable[[], dt.datetime]
Item = tuple[ClaimedRow, dict[str, Any]]
LEASE_MARGIN_SECONDS = 5.0


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
    errors: list[str] = field(default_factory=list)

    def add(self, other: DispatchReport) -> None:
        for name in ("claimed", "delivered", "retried", "failed", "released", "requests",
                     "lost_claims", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.paused = self.paused or other.paused
        self.held = self.held or other.held
        self.errors.extend(other.errors)


class Dispatcher:
    def __init__(
        self, engine: Engine, client: SpotlerClient, settings: Settings, *,
        worker_name: str = "worker", clock: Clock = utc_now, jitter: Jitter = random.random,
    ) -> None:
        self.engine = engine
        self.client = client
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)
        self.worker_name = worker_name
        self.clock = clock
        self.jitter = jitter
        self.stopping = threading.Event()

    # --- the loop ------------------------------------------------------------------------

    def run(self, budget_seconds: float | None = None) -> DispatchReport:
        """Dispatch batches until nothing is due, the budget is spent, or a stop is asked."""
        budget = self.settings.dispatch_time_budget if budget_seconds is None else budget_seconds
        deadline = time.monotonic() + budget
        total = DispatchReport()
        while not self.stopping.is_set():
            report = self.run_once()
            total.add(report)
            if report.claimed == 0 or report.paused or report.held:
                break
            if time.monotonic() >= deadline:
                total.budget_spent = True
                break
        return total

    def run_once(self) -> DispatchReport:
        """Claim one batch and settle every row of it."""
        report = DispatchReport()
        now = self.clock()
        with self.engine.begin() as conn:
            control = store.read_control(conn)
        if control.paused:
            report.paused = True
            return report
        if control.not_before is not None and control.not_before > now:
            report.held = True
            return report
        token = uuid.uuid4().hex
        lease_until = now + dt.timedelta(seconds=self.settings.lease_seconds)
        with self.engine.begin() as conn:
            rows = store.claim_due(conn, limit=self.settings.batch_size, token=token, now=now,
                                   lease_until=lease_until)
        report.claimed = len(rows)
        if not rows:
            return report
        report.batches = 1
        items = self._park_unsendable(rows, token, report)
        if items:
            _Batch(self, token, lease_until, report).deliver(items)
        return report

    def _park_unsendable(self, rows: Sequence[ClaimedRow], token: str,
                         report: DispatchReport) -> list[Item]:
        """Rows that reached the table malformed, or crashed too many claims, are parked."""
        items: list[Item] = []
        parked: list[tuple[ClaimedRow, str]] = []
        for row in rows:
            if row.attempts > self.settings.max_attempts:
                parked.append((row, f"gave up: claimed {row.attempts - 1} times without an "
                                    "answer being recorded (worker crashes?)"))
                continue
            try:
                event = validate_purchase(
                    json.loads(row.payload),
                    multi_currency=self.settings.multi_currency,
                    multi_language=self.settings.multi_language,
                    hash_email=self.settings.hash_email,
                )
            except ValueError as e:
                parked.append((row, f"payload: not valid JSON ({e})"))
                continue
            except InvalidEvent as e:
                parked.append((row, str(e)))
                continue
            if event["orderid"] != row.orderid:
                parked.append((row, f"orderid: the payload says {event['orderid']!r} but the "
                                    f"row's orderid column says {row.orderid!r}"))
                continue
            items.append((row, event))
        if parked:
            now = self.clock()
            with self.engine.begin() as conn:
                for row, reason in parked:
                    store.mark_failed(conn, [row.id], token=token, now=now, error=reason,
                                      http_status=None)
            report.failed += len(parked)
            for row, reason in parked:
                log.error("parked orderid %s as failed: %s", row.orderid, reason)
        return items

    # --- credentials ---------------------------------------------------------------------

    def recheck_credentials(self) -> bool | None:
        """While paused, ask verifyAuth when the check is due. True: resumed; None: not due."""
        now = self.clock()
        with self.engine.begin() as conn:
            control = store.read_control(conn)
        if not control.paused:
            return True
        if control.next_auth_check_at is not None and control.next_auth_check_at > now:
            return None
        check_at = now + dt.timedelta(seconds=self.settings.auth_recheck_interval)
        try:
            self.client.verify_auth()
        except DeliveryError as e:
            with self.engine.begin() as conn:
                store.schedule_auth_check(conn, now=now, check_at=check_at)
            log.error("dispatch still paused: %s; next credential check at %s",
                      e, check_at.isoformat(timespec="seconds"))
            return False
        with self.engine.begin() as conn:
            store.resume(conn, now=now)
        log.warning("credentials verified again: dispatch resumed")
        return True


class _Batch:
    """The settling of one claim: sends, splits on rejection, marks every row."""

    def __init__(self, dispatcher: Dispatcher, token: str, lease_until: dt.datetime,
                 report: DispatchReport) -> None:
        self.d = dispatcher
        self.token = token
        self.lease_until = lease_until
        self.report = report
        self.halted = False  # auth failure or rate limit: the rest of the claim goes back

    def deliver(self, items: list[Item]) -> None:
        if self.halted:
            self._release(items, self.d.clock(), "dispatch halted before this batch was sent")
            return
        if not self._lease_covers_a_request(items):
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
        split = self._settle(items, started, duration_ms, accepted, error)
        if split:
            middle = len(items) // 2
            self.deliver(items[:middle])
            self.deliver(items[middle:])

    def _lease_covers_a_request(self, items: list[Item]) -> bool:
        now = self.d.clock()
        settings = self.d.settings
        needed = settings.connect_timeout + settings.read_timeout + LEASE_MARGIN_SECONDS
        if (self.lease_until - now).total_seconds() >= needed:
            return True
        lease_until = now + dt.timedelta(seconds=settings.lease_seconds)
        ids = [row.id for row, _ in items]
        with self.d.engine.begin() as conn:
            held = store.renew_lease(conn, ids, token=self.token, now=now, lease_until=lease_until)
        if held == len(ids):
            self.lease_until = lease_until
            return True
        # Another worker may hold some of them now: sending would risk a duplicate.
        self.report.lost_claims += len(ids) - held
        log.warning("lost the claim on %d of %d rows before sending; not sending them",
                    len(ids) - held, len(ids))
        return False

    def _settle(self, items: list[Item], started: dt.datetime, duration_ms: int,
                accepted: Accepted | None, error: DeliveryError | None) -> bool:
        """Record the attempt and settle the rows; True when the batch must be split."""
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
        def write(conn: sa.Connection, delta: DispatchReport) -> bool:
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
            elif isinstance(error, Rejected | PartialFailure):
                if len(items) > 1:
                    return True  # the rows stay claimed; the halves are sent next
                store.mark_failed(conn, ids, token=self.token, now=now, error=str(error),
                                  http_status=status)
                delta.failed += 1
            else:
                self._schedule_retries(conn, rows, now, error, delta)
            return False

        split, delta = self._write_outcome(write)
        self.report.add(delta)
        self.halted = self.halted or delta.paused or delta.held
        if delta.lost_claims:
            log.error("%d rows were sent but their claim had passed to another worker",
                      delta.lost_claims)
        if delta.failed and isinstance(error, Rejected | PartialFailure):
            log.error("parked orderid %s as failed: %s", rows[0].orderid, error)
        self._log_batch(len(rows), outcome, status, duration_ms)
        return split

    def _write_outcome(
        self, write: Callable[[sa.Connection, DispatchReport], bool]
    ) -> tuple[bool, DispatchReport]:
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

    def _release(self, items: list[Item], now: dt.datetime, note: str) -> None:
        with self.d.engine.begin() as conn:
            store.release(conn, [row.id for row, _ in items], token=self.token, now=now,
                          not_before=now, note=note)
        self.report.released += len(items)

    def _log_batch(self, count: int, outcome: str, status: int | None, duration_ms: int) -> None:
        level = logging.INFO if outcome == "delivered" else logging.WARNING
        log.log(level, "batch of %d events: %s, HTTP %s, %d ms", count, outcome,
                status if status is not None else "-", duration_ms)


def _outcome_name(error: DeliveryError) -> str:
    names = {AuthFailed: "auth_failed", RateLimited: "rate_limited", Rejected: "rejected",
             PartialFailure: "partial"}
    for cls, name in names.items():
        if isinstance(error, cls):
            return name
    return "retryable"
