"""One claim's rows, from the claim to the end: send, split on rejection, settle every row.

Every row of a claim ends settled (delivered, failed, scheduled for retry) or handed back
without an attempt counted: also when the lease runs short, the claim outlives its time, or
anything unexpected is raised.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import sqlalchemy as sa

from spotler_outbox.models import claims, control
from spotler_outbox.models.claims import AttemptRecord, ClaimedRow
from spotler_outbox.worker.dispatch.context import DispatchContext, DispatchReport
from spotler_outbox.worker.dispatch.decide import Act, Credentials, Decision, decide
from spotler_outbox.worker.dispatch.payloads import unsendable_reason
from spotler_outbox.worker.dispatch.settle import write_answer
from spotler_outbox.worker.spotler.client import Accepted
from spotler_outbox.worker.spotler.errors import DeliveryError

log = logging.getLogger("spotler_outbox.dispatch")

Item = tuple[ClaimedRow, str]  # the row and the JSON text of its event
T = TypeVar("T")
LEASE_MARGIN_SECONDS = 5.0
# Answers after which this claim sends nothing more and dispatch goes on.
_FINAL_AND_GOING_ON = (Act.DELIVER, Act.RETRY, Act.PARK)
BUDGET_HEADROOM = 1.1


class Claim:
    """The rows one claim token holds, until each is settled or handed back."""

    def __init__(self, ctx: DispatchContext, token: str, lease_until: dt.datetime,
                 report: DispatchReport, rows: Sequence[ClaimedRow], *,
                 after: Claim | None = None, stopping: threading.Event | None = None) -> None:
        if ctx.client is None:
            raise ValueError("a claim needs the client of its rows' account")
        self.ctx = ctx
        self.client = ctx.client
        # Claimed ahead while `after` is in flight: this claim sends only once `after` has its
        # answer, and not at all if that answer halted its account or the worker is stopping.
        self.after = after
        self.stopping = stopping
        # Set once this claim sends no more requests, or its one request's answer is final and
        # lets dispatch go on: the claim after it may send from then on.
        self.answered = threading.Event()
        self.crashed = False
        self.token = token
        self.lease_until = lease_until
        self.report = report
        self.rows = list(rows)
        self.unsettled = {row.id for row in rows}
        # A claim may take its lease's length, then what is left goes back: this bounds a
        # task's run far below Celery's hard time limit, whatever the splits cost.
        self.deadline = time.monotonic() + ctx.settings.lease_seconds
        self.halted = False  # paused, rate limited, or part of the claim lost: the rest goes back
        self.credentials = Credentials.UNKNOWN

    def send_all(self) -> None:
        """Park the rows that cannot be sent, send the rest; no row stays claimed for nothing."""
        try:
            items = self._park_unsendable()
            if items and self._my_turn():
                self._send(items)
        except BaseException:
            self.crashed = True
            self._hand_back("not sent: the worker hit an unexpected error")
            raise
        finally:
            self.answered.set()

    def stops(self, later: Claim) -> bool:
        """Whether this claim's answer forbids `later` to send: it paused or held their
        account (others flow on), or it crashed."""
        halted = self.report.paused or self.report.rate_limited
        return self.crashed or (halted and self.ctx.account == later.ctx.account)

    def _my_turn(self) -> bool:
        """Wait for the claim ahead's answer, no longer than this claim's lease allows."""
        if self.after is not None:
            needed = self._needed_for_a_request()
            left = (self.lease_until - self.ctx.clock()).total_seconds() - needed
            if not self.after.answered.wait(max(0.0, left)):
                self._hand_back("not sent: claimed ahead, but the request before it took "
                                "too long; due again now")
                return False
            if self.after.stops(self):
                self._hand_back("not sent: dispatch halted by the answer to the request "
                                "before it; due again now")
                return False
        if self.stopping is not None and self.stopping.is_set():
            self._hand_back("not sent: the worker is stopping; due again now")
            return False
        return True

    def _park_unsendable(self) -> list[Item]:
        items: list[Item] = []
        parked: list[tuple[ClaimedRow, str]] = []
        for row in self.rows:
            reason, event = unsendable_reason(row, self.ctx.settings)
            if reason is None:
                items.append((row, event))
            else:
                parked.append((row, reason))
        if parked:
            with self.ctx.engine.begin() as conn:
                claims.park(conn, [(row.id, reason) for row, reason in parked],
                            token=self.token, now=self.ctx.clock())
            self._settled(row.id for row, _ in parked)
            self.report.failed += len(parked)
            for row, reason in parked:
                log.error("parked orderid %s as failed: %s", row.orderid, reason)
        return items

    def _settled(self, ids: Iterable[int]) -> None:
        self.unsettled.difference_update(ids)

    def _send(self, items: list[Item]) -> None:
        if self.halted or time.monotonic() > self.deadline:
            self._hand_back("not sent: the claim ran out of time or was halted; due again now")
            return
        if not self._wait_for_request_slot() or not self._lease_covers_a_request():
            return
        started = self.ctx.clock()
        t0 = time.perf_counter()
        error: DeliveryError | None = None
        accepted: Accepted | None = None
        try:
            accepted = self.client.track_json([event for _, event in items])
        except DeliveryError as e:
            error = e
        duration_ms = round((time.perf_counter() - t0) * 1000)
        self.report.requests += 1
        decision = decide(error, events=len(items), credentials=self.credentials)
        if self.report.requests == 1 and decision.act in _FINAL_AND_GOING_ON:
            self.answered.set()  # the claim after this one may send while this one settles
        if decision.act is Act.VERIFY_CREDENTIALS:
            self.credentials = self._ask_verify_auth()
            decision = decide(error, events=len(items), credentials=self.credentials)
        status = accepted.http_status if accepted else error.http_status if error else None
        record = AttemptRecord(
            started_at=started, duration_ms=duration_ms, event_count=len(items),
            http_status=status, outcome=decision.outcome,
            error_class=type(error).__name__ if error else None,
            response_excerpt=accepted.excerpt if accepted else error.excerpt if error else None,
            worker=self.ctx.worker_name)
        self._record(items, decision, record)
        if decision.act is Act.HALVE:
            middle = len(items) // 2
            self._send(items[:middle])
            self._send(items[middle:])
        elif decision.act is Act.EACH_ALONE:
            for item in items:
                self._send([item])

    def _wait_for_request_slot(self) -> bool:
        """Take a slot of the account's request budget (SPOTLER_MAX_REQUESTS_PER_SECOND),
        shared with every worker through the control row; False: the rows went back."""
        rate = self.ctx.settings.max_requests_per_second
        if not rate:
            return True
        # 10% headroom: requests start 1.1/rate apart, so network jitter between the start
        # here and the arrival at Spotler cannot squeeze one more into any second.
        interval = BUDGET_HEADROOM / rate
        while True:
            now = self.ctx.clock()
            with self.ctx.engine.begin() as conn:
                free_at = control.take_request_slot(conn, account=self.ctx.account, now=now,
                                                    interval=interval)
            if free_at is None:
                return True
            if time.monotonic() > self.deadline:
                self._hand_back("not sent: the account's request budget left no slot before "
                                "the claim ran out of time; due again now")
                return False
            time.sleep(min(max((free_at - now).total_seconds(), 0.005), 1.0))

    def _ask_verify_auth(self) -> Credentials:
        try:
            self.client.verify_auth()
        except DeliveryError:
            return Credentials.REFUSED
        return Credentials.WORK

    def _needed_for_a_request(self) -> float:
        settings = self.ctx.settings
        return settings.connect_timeout + settings.read_timeout + LEASE_MARGIN_SECONDS

    def _lease_covers_a_request(self) -> bool:
        now = self.ctx.clock()
        settings = self.ctx.settings
        needed = self._needed_for_a_request()
        if (self.lease_until - now).total_seconds() >= needed:
            return True
        lease_until = now + dt.timedelta(seconds=settings.lease_seconds)
        with self.ctx.engine.begin() as conn:
            still_ours = claims.renew(conn, token=self.token, now=now, lease_until=lease_until)
        if still_ours == len(self.unsettled):
            self.lease_until = lease_until
            return True
        # Another worker may hold some of them now: sending would risk a duplicate.
        lost = len(self.unsettled) - still_ours
        self.report.lost_claims += lost
        log.warning("lost the claim on %d of %d rows before sending; handing the rest back",
                    lost, len(self.unsettled))
        self._hand_back("not sent: part of the claim was lost; due again now")
        return False

    def _hand_back(self, note: str) -> None:
        if not self.unsettled:
            return
        self.halted = True
        with self.ctx.engine.begin() as conn:
            released = claims.release(conn, token=self.token, now=self.ctx.clock(), note=note)
        self.report.released += released
        self.unsettled.clear()

    def _record(self, items: list[Item], decision: Decision, record: AttemptRecord) -> None:
        rows = [row for row, _ in items]
        done = self._through_outage(lambda conn: write_answer(
            conn, self.ctx, token=self.token, rows=rows, decision=decision, record=record,
            now=self.ctx.clock()))
        self.report.add(done)
        if not decision.splits:
            self._settled(row.id for row in rows)
        if done.paused or done.rate_limited:
            self.halted = True
        if done.lost_claims:
            log.error("%d rows were sent but their claim had passed to another worker",
                      done.lost_claims)
        if decision.act is Act.PARK:
            log.error("parked orderid %s as failed: %s", rows[0].orderid, decision.reason)
        elif done.failed:
            log.error("%d rows failed for good after their last attempt: %s", done.failed,
                      decision.reason)
        level = logging.INFO if decision.act is Act.DELIVER else logging.WARNING
        # The default account's lines stay as they were; a store's name its account.
        of = f" of account {self.ctx.account}" if self.ctx.account else ""
        log.log(level, "batch of %d events%s: %s, HTTP %s, %d ms", len(rows), of,
                decision.outcome,
                record.http_status if record.http_status is not None else "-",
                record.duration_ms)

    def _through_outage(self, write: Callable[[sa.Connection], T]) -> T:
        """Commit what Spotler answered, retrying through a database outage.

        The answer is known and only the database is missing: giving up now would leave the
        rows to be claimed and sent again when their lease runs out, so keep trying until
        shortly before the lease does.
        """
        pause = 0.1
        while True:
            try:
                with self.ctx.engine.begin() as conn:
                    return write(conn)
            except sa.exc.OperationalError as e:
                left = (self.lease_until - self.ctx.clock()).total_seconds() \
                    - LEASE_MARGIN_SECONDS
                if left <= pause:
                    log.error("could not record Spotler's answer before the lease ran out: %s",
                              type(e).__name__)
                    raise
                log.warning("database unavailable while recording Spotler's answer (%s); "
                            "retrying in %.1fs", type(e).__name__, pause)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
