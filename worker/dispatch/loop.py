"""Claim due rows and hand them to a Claim, until none are due: plain functions, no Celery.

Exactly once rests on three things: a row is sent only while this worker holds its claim
token and lease; the lease is renewed before any request that could outlive it; and a row is
marked delivered in the same transaction that records the attempt, which is retried through
a database outage rather than given up. The one window no client can close is a crash after
Spotler's 2xx and before that commit: the row is then sent again after its lease expires,
noted as such, and Spotler's merge on orderid absorbs the repeat.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy.engine import Engine

from spotler_outbox.models.clock import Clock, clock_for
from spotler_outbox.models.ledger import Ledger
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.dispatch.batch import LEASE_MARGIN_SECONDS, Claim, Outcome, Turn
from spotler_outbox.worker.dispatch.gate import AccountGate
from spotler_outbox.worker.dispatch.report import DispatchReport
from spotler_outbox.worker.dispatch.retry_policy import Jitter, RetryPolicy
from spotler_outbox.worker.spotler.client import SpotlerClient


class Dispatcher:
    def __init__(
        self, engine: Engine, client: SpotlerClient | None, settings: Settings, *,
        stopping: threading.Event | None = None, worker_name: str = "worker",
        clock: Clock | None = None, jitter: Jitter = random.random,
    ) -> None:
        """`client` serves the default account (None: from the settings, if they name one);
        the accounts of SPOTLER_ACCOUNTS_FILE get their own. `stopping`, once set, lets the
        request in flight finish and starts nothing new. `clock` defaults to the database's."""
        self.engine = engine
        self.settings = settings
        self.clock = clock_for(engine) if clock is None else clock
        self.gate = AccountGate(engine, settings, self.clock, default_client=client)
        self.policy = RetryPolicy.from_settings(settings)
        self.jitter = jitter
        self.worker_name = worker_name[:128]
        self.stopping = threading.Event() if stopping is None else stopping

    @property
    def client(self) -> SpotlerClient | None:
        """The default account's client."""
        return self.gate.client_for("")

    def recheck_credentials(self) -> bool | None:
        return self.gate.recheck_credentials()

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
        held: tuple[Claim, Future[Outcome]] | None = None  # the claim last handed to a sender
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="spotler-send") as senders:
            try:
                while not self.stopping.is_set():
                    claim = self.claim_next(after=held[0].turn if held else None)
                    if claim is None:
                        paused, held_by_429 = self.gate.stopped()
                        total.paused |= paused
                        total.rate_limited |= held_by_429
                        break
                    started: Future[Outcome] = senders.submit(claim.send_all)
                    if held is not None:
                        before, held = held, None
                        _settled(before, total)
                    held = (claim, started)
                    if not self._claims_ahead():
                        before, held = held, None
                        _settled(before, total)
                    if time.monotonic() >= deadline:
                        total.budget_spent = True
                        break
            finally:
                if held is not None:
                    _settled(held, total)
        return total

    def claim_next(self, *, after: Turn | None = None) -> Claim | None:
        """Claim a batch of the first account that may send and has rows due (None: none
        has); `after`: the turn of the claim whose answer it waits for before sending."""
        ledger = Ledger.claim(self.engine, self.clock, accounts=self.gate.claim_order(),
                              limit=self.settings.batch_size,
                              lease_seconds=self.settings.lease_seconds)
        if ledger is None:
            return None
        client = self.gate.client_for(ledger.account)
        assert client is not None  # claim_order lists only accounts with a client
        return Claim(ledger, client, self.settings, policy=self.policy, jitter=self.jitter,
                     worker_name=self.worker_name, stopping=self.stopping, after=after)

    def _claims_ahead(self) -> bool:
        """Whether a claim made ahead can wait out a whole request and still send in time.

        It waits at most its lease minus what its own request needs; with a lease shorter
        than two requests' worth it would give its rows back each time: claim one at a time.
        """
        settings = self.settings
        request = settings.connect_timeout + settings.read_timeout
        return settings.lease_seconds >= 2 * request + LEASE_MARGIN_SECONDS


def _settled(sent: tuple[Claim, Future[Outcome]], total: DispatchReport) -> None:
    """Wait until a claim on a sender thread has settled every row; count what it did."""
    claim, future = sent
    try:
        future.result()
    finally:
        total.add(claim.report)
