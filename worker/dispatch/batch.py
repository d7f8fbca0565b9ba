"""One claim's rows, from the claim to the end: send, decide, split on rejection.

Every transaction on the rows is the ledger's (models.ledger): it settles each answer, and
hands back what was never sent when the claim runs out of time, loses part of its rows, is
halted, or hits something unexpected.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from spotler_outbox.models.claims import AttemptRecord, ClaimedRow
from spotler_outbox.models.ledger import Ledger
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.dispatch.decide import Act, Credentials, Decision, decide
from spotler_outbox.worker.dispatch.payloads import unsendable_reason
from spotler_outbox.worker.dispatch.report import DispatchReport
from spotler_outbox.worker.dispatch.retry_policy import Jitter, RetryPolicy
from spotler_outbox.worker.dispatch.settle import settlement_for
from spotler_outbox.worker.spotler.client import Accepted, SpotlerClient
from spotler_outbox.worker.spotler.errors import DeliveryError

log = logging.getLogger("spotler_outbox.dispatch")

Item = tuple[ClaimedRow, str]  # the row and the JSON text of its event
LEASE_MARGIN_SECONDS = 5.0


class Outcome(enum.Enum):
    """What sending one part of a claim came to; the claim after it reads it as its turn."""

    SETTLED = "settled"  # delivered, retried or parked: dispatch goes on
    HALTED = "halted"  # a pause or a 429 stopped this claim's account on every worker
    SPLIT = "split"  # sent again in parts
    HANDED_BACK = "handed_back"  # not sent: out of time, lease lost, budget, stopping
    CRASHED = "crashed"  # something unexpected was raised


class Turn:
    """When the claim made ahead behind this one may send, and whether: set once, by the
    first final answer or the end of the claim."""

    def __init__(self, account: str) -> None:
        self.account = account
        self.outcome = Outcome.SETTLED
        self._given = threading.Event()

    def give(self, outcome: Outcome) -> None:
        if not self._given.is_set():
            self.outcome = outcome
            self._given.set()

    def wait(self, seconds: float) -> bool:
        return self._given.wait(max(0.0, seconds))

    def forbids(self, account: str) -> bool:
        """Whether the answer forbids a claim of `account` to send: a crash stops this
        worker; a pause or a hold stops only its account (others flow on)."""
        return self.outcome is Outcome.CRASHED or (
            self.outcome is Outcome.HALTED and account == self.account)


class Claim:
    """The rows one claim token holds, until each is settled or handed back."""

    def __init__(self, ledger: Ledger, client: SpotlerClient, settings: Settings, *,
                 policy: RetryPolicy, jitter: Jitter, worker_name: str,
                 stopping: threading.Event, after: Turn | None = None) -> None:
        self.ledger, self.client, self.settings = ledger, client, settings
        self.policy, self.jitter, self.worker_name = policy, jitter, worker_name
        self.stopping = stopping
        self.after = after  # claimed ahead: send only once that claim's turn says so
        self.turn = Turn(ledger.account)
        self.report = DispatchReport(claimed=len(ledger.rows), batches=1)
        # A claim may take its lease's length, then what is left goes back: this bounds a
        # task's run far below Celery's hard time limit, whatever the splits cost.
        self.deadline = time.monotonic() + settings.lease_seconds
        self.request_needs = settings.connect_timeout + settings.read_timeout \
            + LEASE_MARGIN_SECONDS
        self.credentials = Credentials.UNKNOWN

    def send_all(self) -> Outcome:
        outcome = Outcome.HANDED_BACK
        try:
            items = self._sendable()
            if items and self._my_turn():
                outcome = self._send(items)
        except BaseException as e:
            outcome = Outcome.CRASHED
            self.turn.give(outcome)
            self.ledger.abandon(e)
            raise
        finally:
            self.turn.give(outcome)
            self.report.released += self.ledger.released
            self.report.lost_claims += self.ledger.lost
        return outcome

    def _my_turn(self) -> bool:
        """Wait for the claim ahead's answer, no longer than this claim's lease allows."""
        if self.after is not None:
            if not self.after.wait(self.ledger.lease_left() - self.request_needs):
                return self._back("not sent: claimed ahead, but the request before it took "
                                  "too long; due again now")
            if self.after.forbids(self.ledger.account):
                return self._back("not sent: dispatch halted by the answer to the request "
                                  "before it; due again now")
        if self.stopping.is_set():
            return self._back("not sent: the worker is stopping; due again now")
        return True

    def _back(self, note: str) -> bool:
        self.ledger.hand_back(note)
        return False

    def _sendable(self) -> list[Item]:
        """Park the rows that cannot be sent; the rest with their JSON, to send."""
        checked = [(row, *unsendable_reason(row, self.settings)) for row in self.ledger.rows]
        parked = [(row, reason) for row, reason, _ in checked if reason is not None]
        self.ledger.park_unsendable([(row.id, reason) for row, reason in parked])
        self.report.failed += len(parked)
        for row, reason in parked:
            log.error("parked orderid %s as failed: %s", row.orderid, reason)
        return [(row, event) for row, reason, event in checked if reason is None]

    def _send(self, items: list[Item]) -> Outcome:
        if time.monotonic() > self.deadline:
            self.ledger.hand_back("not sent: the claim ran out of time or was halted; due "
                                  "again now")
            return Outcome.HANDED_BACK
        if not (self.ledger.wait_for_request_slot(self.settings.max_requests_per_second,
                                                  self.deadline)
                and self.ledger.renew_for(self.request_needs)):
            return Outcome.HANDED_BACK
        rows = [row for row, _ in items]
        self.ledger.sending(rows)
        first_request = self.report.requests == 0
        error, record = self._request(rows, lambda: self.client.track_json(
            [event for _, event in items]))
        decision = decide(error, events=len(items), credentials=self.credentials)
        if first_request and decision.act in (Act.DELIVER, Act.RETRY, Act.PARK):
            self.turn.give(Outcome.SETTLED)  # the claim after may send while this one records
        if decision.act is Act.VERIFY_CREDENTIALS:
            # A second request before this answer is recorded: the lease must cover it too, or
            # another worker could take the rows meanwhile. A part lost here is settled by
            # token (nothing of the other worker's is touched), the rest handed back.
            self.ledger.renew_for(self.request_needs)
            self.credentials = self._ask_verify_auth()
            decision = decide(error, events=len(items), credentials=self.credentials)
        settled = self.ledger.settle(settlement_for(
            decision, rows, replace(record, outcome=decision.outcome), policy=self.policy,
            auth_recheck_seconds=self.settings.auth_recheck_interval, now=self.ledger.clock(),
            jitter=self.jitter))
        self.report.add_settled(settled)
        log_answer(self.ledger, rows, decision, record, settled.failed)
        if settled.paused or settled.rate_limited:
            self.turn.give(Outcome.HALTED)
            return Outcome.HALTED
        if not decision.splits:
            return Outcome.SETTLED
        middle = len(items) // 2
        parts = [items[:middle], items[middle:]] if decision.act is Act.HALVE \
            else [[item] for item in items]
        for part in parts:
            outcome = self._send(part)
            if outcome in (Outcome.HALTED, Outcome.HANDED_BACK):
                self.ledger.hand_back("not sent: the claim ran out of time or was halted; "
                                      "due again now")
                return outcome
        return Outcome.SPLIT

    def _request(self, rows: list[ClaimedRow], send: Callable[[], Accepted]
                 ) -> tuple[DeliveryError | None, AttemptRecord]:
        """Send, and what the attempt row records of it (its outcome is the decision's)."""
        started, t0 = self.ledger.clock(), time.perf_counter()
        accepted: Accepted | None = None
        error: DeliveryError | None = None
        try:
            accepted = send()
        except DeliveryError as e:
            error = e
        self.report.requests += 1
        status = accepted.http_status if accepted else error.http_status if error else None
        excerpt = accepted.excerpt if accepted else error.excerpt if error else None
        return error, AttemptRecord(
            started_at=started, duration_ms=round((time.perf_counter() - t0) * 1000),
            event_count=len(rows), http_status=status, outcome="",
            error_class=type(error).__name__ if error else None, response_excerpt=excerpt,
            worker=self.worker_name)

    def _ask_verify_auth(self) -> Credentials:
        try:
            self.client.verify_auth()
        except DeliveryError:
            return Credentials.REFUSED
        return Credentials.WORK


def log_answer(ledger: Ledger, rows: list[ClaimedRow], decision: Decision,
               record: AttemptRecord, failed: int) -> None:
    """One line per request (the operator's "one line per batch"), and one per parked row."""
    if decision.act is Act.PARK:
        log.error("parked orderid %s as failed: %s", rows[0].orderid, decision.reason)
    elif failed:
        log.error("%d rows failed for good after their last attempt: %s", failed,
                  decision.reason)
    level = logging.INFO if decision.act is Act.DELIVER else logging.WARNING
    # The default account's lines stay as they were; a store's name its account.
    of = f" of account {ledger.account}" if ledger.account else ""
    log.log(level, "batch of %d events%s: %s, HTTP %s, %d ms", len(rows), of, decision.outcome,
            record.http_status if record.http_status is not None else "-", record.duration_ms)
