"""Claim due rows and hand them to a Claim, until none are due: plain functions, no Celery.

Exactly once rests on three things: a row is sent only while this worker holds its claim
token and lease; the lease is renewed before any request that could outlive it; and a row is
marked delivered in the same transaction that records the attempt. The one window no client
can close is a crash after Spotler's 2xx and before that commit: the row is then sent again
after its lease expires, and Spotler's merge on orderid absorbs the repeat.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.models import claims, control
from spotler_outbox.models.accounts import shown_account
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.dispatch.batch import LEASE_MARGIN_SECONDS, Claim
from spotler_outbox.worker.dispatch.context import Clock, DispatchContext, DispatchReport
from spotler_outbox.worker.dispatch.retry_policy import Jitter, RetryPolicy
from spotler_outbox.worker.spotler.accounts import AccountClients
from spotler_outbox.worker.spotler.client import SpotlerClient
from spotler_outbox.worker.spotler.errors import DeliveryError

log = logging.getLogger("spotler_outbox.dispatch")


class Dispatcher:
    def __init__(
        self, engine: Engine, client: SpotlerClient | None, settings: Settings, *,
        worker_name: str = "worker", clock: Clock = utc_now, jitter: Jitter = random.random,
    ) -> None:
        """`client` serves the default account (None: from the settings, if they name one);
        the accounts of SPOTLER_ACCOUNTS_FILE get their own."""
        if client is None and settings.account and settings.api_key:
            client = SpotlerClient(settings)
        self.clients = AccountClients(settings, default=client)
        self.ctx = DispatchContext(engine=engine, client=client, settings=settings,
                                   policy=RetryPolicy.from_settings(settings), clock=clock,
                                   jitter=jitter, worker_name=worker_name[:128])
        self.stopping = threading.Event()

    @property
    def engine(self) -> Engine:
        return self.ctx.engine

    @property
    def client(self) -> SpotlerClient | None:
        """The default account's client."""
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
                    # A paused or held account leaves the others to flow: only an empty claim
                    # stops (the claim statement itself skips a stopped account).
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
        """Claim a batch (None: nothing due for an account that may send)."""
        report = DispatchReport()
        claim = self._claim(report, after=after)
        if claim is None:
            total.add(report)
        return claim

    def sendable_accounts(self, conn: sa.Connection, now: dt.datetime,
                          report: DispatchReport | None = None,
                          states: dict[str, control.Control] | None = None) -> list[str]:
        """Accounts with credentials that are neither paused nor held (by `states`, if the
        caller read them already); with a report, say there which stop left one out."""
        self.clients.refresh()
        if states is None:
            states = control.read_controls(conn)
        sendable = []
        for account in self.clients.accounts:
            state = states.get(account, control.NO_CONTROL)
            if state.paused:
                if report is not None:
                    report.paused = True
            elif state.rate_limited(now):
                if report is not None:
                    report.rate_limited = True
            else:
                sendable.append(account)
        return sendable

    def claim_order(self, accounts: list[str]) -> list[str]:
        """A random order, fair between accounts whichever has the older backlog; the default
        account spelled out by its id (plain SQL, rare) last, so that a one-account outbox
        does not pay an empty claim for it on half its batches."""
        shuffled = random.sample(accounts, len(accounts))
        named_default = [a for a in shuffled if a and a == self.settings.account]
        return [a for a in shuffled if a not in named_default] + named_default

    def run_once(self) -> DispatchReport:
        """Claim one batch of one account and settle every row of it."""
        report = DispatchReport()
        claim = self._claim(report)
        if claim is not None:
            claim.send_all()
        return report

    def _claim(self, report: DispatchReport, *, after: Claim | None = None) -> Claim | None:
        now = self.ctx.clock()
        token = uuid.uuid4().hex
        lease_until = now + dt.timedelta(seconds=self.settings.lease_seconds)
        rows: list[claims.ClaimedRow] = []
        self.clients.refresh()
        with self.engine.begin() as conn:
            # The claim itself skips a paused or held account: no statement of its own per
            # batch. Only when nothing was claimed are the control rows read, to say why.
            for account in self.claim_order(self.clients.accounts):
                client = self.clients.client_for(account)
                if client is None:
                    continue
                rows = claims.claim_due(conn, limit=self.settings.batch_size, token=token,
                                        now=now, lease_until=lease_until, account=account)
                if rows:
                    break
            if not rows:
                self.sendable_accounts(conn, now, report)
        report.claimed = len(rows)
        if not rows:
            return None
        report.batches = 1
        ctx = dataclasses.replace(self.ctx, account=account, client=client)
        return Claim(ctx, token, lease_until, report, rows, after=after, stopping=self.stopping)

    def recheck_credentials(self) -> bool | None:
        """Ask verifyAuth for each paused account whose check is due, and resume those it
        accepts. True: no account stays paused; False: one was refused again; None: the
        paused ones are not due for a check yet."""
        now = self.ctx.clock()
        self.clients.refresh()
        with self.engine.begin() as conn:
            paused = {a: s for a, s in control.read_controls(conn).items() if s.paused}
        result: bool | None = True
        for account, state in sorted(paused.items()):
            checked = self._recheck(account, state, now)
            if checked is False or (checked is None and result is True):
                result = checked
        return result

    def _recheck(self, account: str, state: control.Control, now: dt.datetime) -> bool | None:
        if not state.auth_check_due(now):
            return None
        client = self.clients.client_for(account)
        if client is None:
            return None  # no credentials for it any more: nothing can be sent either way
        name = shown_account(account, self.settings)
        check_at = now + dt.timedelta(seconds=self.settings.auth_recheck_interval)
        try:
            client.verify_auth()
        except DeliveryError as e:
            with self.engine.begin() as conn:
                control.schedule_auth_check(conn, now=now, check_at=check_at, account=account)
            log.error("dispatch for account %s still paused: %s; next credential check at %s",
                      name, e, check_at.isoformat(timespec="seconds"))
            return False
        with self.engine.begin() as conn:
            control.resume(conn, now=now, account=account)
        log.warning("credentials of account %s verified again: its dispatch resumed", name)
        return True


def _settled(sent: tuple[Claim, Future[None]], total: DispatchReport) -> None:
    """Wait until a claim on a sender thread has settled every row; count what it did."""
    claim, future = sent
    try:
        future.result()
    finally:
        total.add(claim.report)
