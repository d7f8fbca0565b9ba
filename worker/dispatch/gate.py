"""Which accounts may send: they have credentials, and no pause or 429 hold stops them; and
the credentials recheck that lifts a pause. Used by the dispatch loop and the sweeper."""

from __future__ import annotations

import datetime as dt
import logging
import random

from sqlalchemy.engine import Engine

from spotler_outbox.models import control
from spotler_outbox.models.accounts import shown_account
from spotler_outbox.models.clock import Clock
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.spotler.accounts import AccountClients
from spotler_outbox.worker.spotler.client import SpotlerClient
from spotler_outbox.worker.spotler.errors import DeliveryError

log = logging.getLogger("spotler_outbox.dispatch")


class AccountGate:
    def __init__(self, engine: Engine, settings: Settings, clock: Clock, *,
                 default_client: SpotlerClient | None = None) -> None:
        """`default_client` serves the default account (None: from the settings, if they name
        one); the accounts of SPOTLER_ACCOUNTS_FILE get their own."""
        if default_client is None and settings.account and settings.api_key:
            default_client = SpotlerClient(settings)
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self.clients = AccountClients(settings, default=default_client)

    def client_for(self, account: str) -> SpotlerClient | None:
        return self.clients.client_for(account)

    def claim_order(self) -> list[str]:
        """The accounts with credentials, in the order to claim from: random, so fair between
        accounts whichever has the older backlog; the default account spelled out by its id
        (plain SQL, rare) last, so that a one-account outbox does not pay an empty claim for
        it on half its batches. (The claim itself skips a paused or held account.)"""
        self.clients.refresh()
        accounts = [a for a in self.clients.accounts if self.clients.client_for(a) is not None]
        shuffled = random.sample(accounts, len(accounts))
        named_default = [a for a in shuffled if a and a == self.settings.account]
        return [a for a in shuffled if a not in named_default] + named_default

    def sendable(self, states: dict[str, control.Control], now: dt.datetime
                 ) -> tuple[list[str], bool, bool]:
        """The accounts with credentials that may send now, by their control `states`; and
        whether a pause, and whether a 429 hold, left one out."""
        self.clients.refresh()
        sendable, paused, held = [], False, False
        for account in self.clients.accounts:
            state = states.get(account, control.NO_CONTROL)
            if state.paused:
                paused = True
            elif state.rate_limited(now):
                held = True
            else:
                sendable.append(account)
        return sendable, paused, held

    def stopped(self) -> tuple[bool, bool]:
        """Whether a pause, and whether a 429 hold, stops one of the accounts now: why a claim
        found nothing, read only then (the claim itself skips stopped accounts)."""
        _, paused, held = self.sendable(control.read_all(self.engine), self.clock())
        return paused, held

    def recheck_credentials(self) -> bool | None:
        """Ask verifyAuth for each paused account whose check is due, and resume those it
        accepts. True: no account stays paused; False: one was refused again; None: the
        paused ones are not due for a check yet."""
        now = self.clock()
        self.clients.refresh()
        paused = {a: s for a, s in control.read_all(self.engine).items() if s.paused}
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
            control.record_auth_check(self.engine, account=account, verified=False, now=now,
                                      check_at=check_at)
            log.error("dispatch for account %s still paused: %s; next credential check at %s",
                      name, e, check_at.isoformat(timespec="seconds"))
            return False
        control.record_auth_check(self.engine, account=account, verified=True, now=now,
                                  check_at=check_at)
        log.warning("credentials of account %s verified again: its dispatch resumed", name)
        return True
