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

from sqlalchemy.engine import Engine

from spotler_outbox.models import claims, control
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.dispatch.batch import Claim
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
        """Dispatch batches until nothing is due, the budget is spent, or a stop is asked."""
        budget = self.settings.dispatch_time_budget if budget_seconds is None else budget_seconds
        deadline = time.monotonic() + budget
        total = DispatchReport()
        while not self.stopping.is_set():
            report = self.run_once()
            total.add(report)
            if report.claimed == 0 or report.paused or report.rate_limited:
                break
            if time.monotonic() >= deadline:
                total.budget_spent = True
                break
        return total

    def run_once(self) -> DispatchReport:
        """Claim one batch and settle every row of it."""
        report = DispatchReport()
        now = self.ctx.clock()
        token = uuid.uuid4().hex
        lease_until = now + dt.timedelta(seconds=self.settings.lease_seconds)
        with self.engine.begin() as conn:
            state = control.read_control(conn)
            if state.paused:
                report.paused = True
                return report
            if state.rate_limited(now):
                report.rate_limited = True
                return report
            rows = claims.claim_due(conn, limit=self.settings.batch_size, token=token, now=now,
                                    lease_until=lease_until)
        report.claimed = len(rows)
        if rows:
            report.batches = 1
            Claim(self.ctx, token, lease_until, report, rows).send_all()
        return report

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
