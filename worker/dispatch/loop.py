"""Claim due rows and hand them to a Claim, until none are due: plain functions, no Celery.

Exactly once rests on three things: a row is sent only while this worker holds its claim
token and lease; the lease is renewed before any request that could outlive it; and a row is
marked delivered in the same transaction that records the attempt. The one window no client
can close is a crash after Spotler's 2xx and before that commit: the row is then sent again
after its lease expires, and Spotler's merge on orderid absorbs the repeat.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy.engine import Engine

from spotler_outbox.models import claims, control
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.dispatch.batch import LEASE_MARGIN_SECONDS, Claim
from spotler_outbox.worker.dispatch.context import Clock, DispatchContext, DispatchReport
from spotler_outbox.worker.dispatch.retry_policy import Jitter, RetryPolicy
from spotler_outbox.worker.spotler.client import SpotlerClient
from spotler_outbox.worker.spotler.errors import DeliveryError

log = logging.getLogger("spotler_outbox.dispatch")


class Dispatcher:
    def __init__(
        self, engine: Engine, client: SpotlerClient, settings: Settings, *,
        worker_name: str = "worker", clock: Clock = utc_now, jitter: Jitter = random.random,
    ) -> None:
        self.ctx = DispatchContext(engine=engine, client=client, settings=settings,
                                   policy=RetryPolicy.from_settings(settings), clock=clock,
                                   jitter=jitter, worker_name=worker_name[:128])
        self.stopping = threading.Event()

    @property
    def engine(self) -> Engine:
        return self.ctx.engine

    @property
    def client(self) -> SpotlerClient:
        return self.ctx.client

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    def run(self, budget_seconds: float | None = None) -> DispatchReport:
        """Dispatch batches until nothing is due, the budget is spent, or a stop is asked.

        Pipelined: while one claim's request is in flight, the next batch is claimed (and its
        unsendable rows parked), and it sends as soon as that request is answered, while the
        first records the answer. Each claim runs on a sender thread; at most two are held
        at a time, and the one claimed ahead waits no longer than its lease allows.
        """
        budget = self.settings.dispatch_time_budget if budget_seconds is None else budget_seconds
        deadline = time.monotonic() + budget
        total = DispatchReport()
        held: tuple[Claim, Future[None]] | None = None  # the claim last handed to a sender
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="spotler-send") as senders:
            try:
                while not self.stopping.is_set():
                    claim = self._claim_next(total, after=held[0] if held else None)
                    if claim is None:
                        break
                    started = senders.submit(claim.send_all)
                    if held is not None:
                        before, held = held, None
                        _settled(before, total)
                    held = (claim, started)
                    if not self._claims_ahead():
                        before, held = held, None
                        _settled(before, total)
                    if total.paused or total.rate_limited:
                        break  # the claim just made sees it and hands its rows back
                    if time.monotonic() >= deadline:
                        total.budget_spent = True
                        break
            finally:
                if held is not None:
                    _settled(held, total)
        return total

    def _claims_ahead(self) -> bool:
        """Whether a claim made ahead can wait out a whole request and still send in time.

        It waits at most its lease minus what its own request needs; with a lease shorter
        than two requests' worth it would give its rows back each time: claim one at a time.
        """
        settings = self.settings
        request = settings.connect_timeout + settings.read_timeout
        return settings.lease_seconds >= 2 * request + LEASE_MARGIN_SECONDS

    def _claim_next(self, total: DispatchReport, *, after: Claim | None) -> Claim | None:
        """Claim a batch (None: nothing due, or dispatch is paused or rate limited)."""
        report = DispatchReport()
        claim = self._claim(report, after=after)
        if claim is None:
            total.add(report)
        return claim

    def run_once(self) -> DispatchReport:
        """Claim one batch and settle every row of it."""
        report = DispatchReport()
        claim = self._claim(report)
        if claim is not None:
            claim.send_all()
        return report

    def _claim(self, report: DispatchReport, *, after: Claim | None = None) -> Claim | None:
        now = self.ctx.clock()
        token = uuid.uuid4().hex
        lease_until = now + dt.timedelta(seconds=self.settings.lease_seconds)
        with self.engine.begin() as conn:
            state = control.read_control(conn)
            if state.paused:
                report.paused = True
                return None
            if state.rate_limited(now):
                report.rate_limited = True
                return None
            rows = claims.claim_due(conn, limit=self.settings.batch_size, token=token, now=now,
                                    lease_until=lease_until)
        report.claimed = len(rows)
        if not rows:
            return None
        report.batches = 1
        return Claim(self.ctx, token, lease_until, report, rows, after=after,
                     stopping=self.stopping)

    def has_due_rows(self) -> bool:
        with self.engine.begin() as conn:
            return claims.any_due(conn, self.ctx.clock())

    def recheck_credentials(self) -> bool | None:
        """While paused, ask verifyAuth when the check is due. True: resumed; None: not due."""
        now = self.ctx.clock()
        with self.engine.begin() as conn:
            state = control.read_control(conn)
        if not state.paused:
            return True
        if state.next_auth_check_at is not None and state.next_auth_check_at > now:
            return None
        check_at = now + dt.timedelta(seconds=self.settings.auth_recheck_interval)
        try:
            self.client.verify_auth()
        except DeliveryError as e:
            with self.engine.begin() as conn:
                control.schedule_auth_check(conn, now=now, check_at=check_at)
            log.error("dispatch still paused: %s; next credential check at %s",
                      e, check_at.isoformat(timespec="seconds"))
            return False
        with self.engine.begin() as conn:
            control.resume(conn, now=now)
        log.warning("credentials verified again: dispatch resumed")
        return True


def _settled(sent: tuple[Claim, Future[None]], total: DispatchReport) -> None:
    """Wait until a claim on a sender thread has settled every row; count what it did."""
    claim, future = sent
    try:
        future.result()
    finally:
        total.add(claim.report)
