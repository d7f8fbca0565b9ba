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
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from models import store
from models.errors import DeliveryError, InvalidEvent
from models.settings import Settings
from models.store import ClaimedRow
from models.validation import validate_purchase
from worker.claim import Claim, Clock, DispatchReport, Item, utc_now
from worker.client import SpotlerClient
from worker.retry_policy import Jitter, RetryPolicy

__all__ = ["DispatchReport", "Dispatcher", "utc_now"]

log = logging.getLogger("spotler_outbox.dispatch")


class Dispatcher:
    def __init__(
        self, engine: Engine, client: SpotlerClient, settings: Settings, *,
        worker_name: str = "worker", clock: Clock = utc_now, jitter: Jitter = random.random,
    ) -> None:
        self.engine = engine
        self.client = client
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)
        self.worker_name = worker_name[:128]
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
        token = uuid.uuid4().hex
        lease_until = now + dt.timedelta(seconds=self.settings.lease_seconds)
        with self.engine.begin() as conn:
            control = store.read_control(conn)
            if control.paused:
                report.paused = True
                return report
            if control.not_before is not None and control.not_before > now:
                report.held = True
                return report
            rows = store.claim_due(conn, limit=self.settings.batch_size, token=token, now=now,
                                   lease_until=lease_until)
        report.claimed = len(rows)
        if not rows:
            return report
        report.batches = 1
        claim = Claim(self, token, lease_until, report, [row.id for row in rows])
        claim.settle(lambda: self._park_unsendable(rows, token, report, claim))
        return report

    def has_due_rows(self) -> bool:
        with self.engine.begin() as conn:
            return store.any_due(conn, self.clock())

    def _park_unsendable(self, rows: Sequence[ClaimedRow], token: str,
                         report: DispatchReport, claim: Claim) -> list[Item]:
        """Rows that reached the table malformed, or crashed too many claims, are parked."""
        items: list[Item] = []
        parked: list[tuple[ClaimedRow, str]] = []
        for row in rows:
            if row.attempts > self.settings.max_attempts:
                parked.append((row, f"gave up: claimed {row.attempts - 1} times without an "
                                    "answer being recorded (worker crashes?)"))
                continue
            problem, event = self._sendable(row)
            if problem is None:
                items.append((row, event))
            else:
                parked.append((row, problem))
        if parked:
            with self.engine.begin() as conn:
                store.park_each(conn, [(row.id, reason) for row, reason in parked], token=token,
                                now=self.clock())
            claim.settled(row.id for row, _ in parked)
            report.failed += len(parked)
            for row, reason in parked:
                log.error("parked orderid %s as failed: %s", row.orderid, reason)
        return items

    def _sendable(self, row: ClaimedRow) -> tuple[str | None, dict[str, object]]:
        """(None, event) for a row that can be sent, else (the reason, {})."""
        try:
            payload = json.loads(row.payload)
        except ValueError as e:
            return f"payload: not valid JSON ({e})", {}
        except RecursionError:
            return "payload: JSON nested too deeply to read", {}
        try:
            event = validate_purchase(
                payload,
                multi_currency=self.settings.multi_currency,
                multi_language=self.settings.multi_language,
                hash_email=self.settings.hash_email,
            )
        except InvalidEvent as e:
            return str(e), {}
        except Exception as e:  # a validator bug must park one row, not stall the batch
            log.exception("validating orderid %s failed unexpectedly", row.orderid)
            return f"payload: could not be validated ({type(e).__name__})", {}
        if event["orderid"] != row.orderid:
            return (f"orderid: the payload says {event['orderid']!r} but the row's orderid "
                    f"column says {row.orderid!r}"), {}
        return None, event

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
