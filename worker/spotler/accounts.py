"""One Spotler client per account that has credentials, kept current with the accounts file.

The file is read again when it changes (its mtime or size), so an account whose rows wait for
credentials starts sending once its key is added, and a changed key is used from the next
claim on; an unreadable file keeps the credentials read last, and says so once.
"""

from __future__ import annotations

import logging
import threading

from spotler_outbox.models.accounts import (
    DEFAULT_ACCOUNT,
    AccountKeys,
    account_keys,
    accounts_file_stamp,
)
from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.spotler.client import SpotlerClient

log = logging.getLogger("spotler_outbox.accounts")


class AccountClients:
    def __init__(self, settings: Settings, default: SpotlerClient | None = None) -> None:
        self.settings = settings
        self._default = default  # a client given by the caller serves the default account
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._keys = AccountKeys({})
        self._clients: dict[str, tuple[tuple[str, str], SpotlerClient]] = {}
        self._reported: str | None = None
        self._load()
        if not self.accounts:
            log.error("no Spotler credentials: set SPOTLER_ACCOUNT and SPOTLER_API_KEY, or "
                      "SPOTLER_ACCOUNTS_FILE; rows wait until an account has them")

    def _load(self) -> None:
        stamp = accounts_file_stamp(self.settings)
        try:
            keys = account_keys(self.settings)
            self._reported = None
        except ConfigurationError as e:
            if str(e) != self._reported:
                log.error("%s; keeping the accounts read before", e)
                self._reported = str(e)
            # Nothing read before: the single SPOTLER_ACCOUNT pair still works on its own.
            keys = self._keys if self._stamp is not None or self._keys.accounts else \
                account_keys(self.settings.with_overrides(accounts_file=""))
        self._stamp, self._keys = stamp, keys

    def refresh(self) -> None:
        """Read the accounts file again if it changed since it was last read."""
        if not self.settings.accounts_file:
            return
        with self._lock:
            if accounts_file_stamp(self.settings) != self._stamp:
                self._load()

    @property
    def accounts(self) -> list[str]:
        """The accounts with credentials, as the rows store them."""
        with self._lock:
            accounts = self._keys.accounts
        if self._default is not None and DEFAULT_ACCOUNT not in accounts:
            accounts = [DEFAULT_ACCOUNT, *accounts]
        return accounts

    def client_for(self, account: str) -> SpotlerClient | None:
        """The account's client, or None while it has no credentials."""
        if account == DEFAULT_ACCOUNT and self._default is not None:
            return self._default
        with self._lock:
            credentials = self._keys.credentials.get(account)
            if credentials is None:
                return None
            cached = self._clients.get(account)
            if cached is not None and cached[0] == credentials:
                return cached[1]
            client = SpotlerClient(self.settings, account=credentials[0],
                                   api_key=credentials[1])
            if cached is not None:
                cached[1].close()
            self._clients[account] = (credentials, client)
            return client
