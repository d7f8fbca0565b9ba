"""Which Spotler account a row belongs to, and which accounts have credentials.

A row's `account` column names its Spotler account. The empty string is the default account:
whatever SPOTLER_ACCOUNT says when the row is sent. Rows written before accounts existed, and
rows inserted by plain SQL without the column, carry it; so a deployment that never sets an
account keeps working unchanged, and renaming SPOTLER_ACCOUNT needs no data migration.

Keys live in SPOTLER_ACCOUNTS_FILE, read again whenever the file changes, so an account whose
rows wait for credentials starts sending once its key is added, without a restart. No error
here ever quotes a key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from spotler_outbox.models.errors import ConfigurationError, InvalidEvent
from spotler_outbox.models.settings import ProducerSettings, Settings

DEFAULT_ACCOUNT = ""
MAX_ACCOUNT_LENGTH = 64  # the column's width


@dataclass(frozen=True)
class AccountKeys:
    """Account id (as the rows store it) -> (X-AUTH-ACCOUNT, X-AUTH-APIKEY)."""

    credentials: dict[str, tuple[str, str]] = field(repr=False)

    @property
    def accounts(self) -> list[str]:
        return sorted(self.credentials)

    def __contains__(self, account: object) -> bool:
        return account in self.credentials


def row_account(account: str | None, settings: ProducerSettings) -> str:
    """The value stored for `account`: the default account is always stored as ''.

    One spelling per account keeps (account, event, orderid) unique: an order enqueued once
    with account=None and once with account=SPOTLER_ACCOUNT is the same order.
    """
    if account is None:
        return DEFAULT_ACCOUNT
    if not isinstance(account, str):
        raise InvalidEvent([f"account: must be a string, got {type(account).__name__}"])
    account = account.strip()
    if len(account) > MAX_ACCOUNT_LENGTH:
        raise InvalidEvent([f"account: at most {MAX_ACCOUNT_LENGTH} characters, "
                            f"got {len(account)}"])
    return DEFAULT_ACCOUNT if account == settings.account else account


def shown_account(account: str, settings: Settings) -> str:
    """How operators see an account: the default one by its configured name, if any."""
    if account != DEFAULT_ACCOUNT:
        return account
    return f"{settings.account} (default)" if settings.account else "(default)"


def read_accounts_file(path: str) -> dict[str, str]:
    """The JSON object {"<account id>": "<api key>", ...} in `path`."""
    name = "SPOTLER_ACCOUNTS_FILE"
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except OSError as e:
        raise ConfigurationError(f"{name}: cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        # The message of a JSON error may quote the text around it: a key. Only its place.
        position = getattr(e, "lineno", "?"), getattr(e, "colno", "?")
        raise ConfigurationError(f"{name}: {path} is not valid JSON (line {position[0]}, "
                                 f"column {position[1]})") from None
    if not isinstance(doc, dict):
        raise ConfigurationError(f"{name}: {path} must hold a JSON object "
                                 '{"<account id>": "<api key>", ...}')
    for account, key in doc.items():
        if not account.strip() or len(account) > MAX_ACCOUNT_LENGTH:
            raise ConfigurationError(f"{name}: account id {account!r} must be 1 to "
                                     f"{MAX_ACCOUNT_LENGTH} characters")
        if not isinstance(key, str) or not key.strip():
            raise ConfigurationError(f"{name}: the api key of account {account!r} must be a "
                                     "non-empty string")
    return {account.strip(): key.strip() for account, key in doc.items()}


def account_keys(settings: Settings) -> AccountKeys:
    """Every account that can be sent: the default pair, and each account of the file."""
    credentials: dict[str, tuple[str, str]] = {}
    if settings.account and settings.api_key:
        credentials[DEFAULT_ACCOUNT] = (settings.account, settings.api_key)
    if settings.accounts_file:
        for account, key in read_accounts_file(settings.accounts_file).items():
            credentials[row_account(account, settings)] = (account, key)
    if DEFAULT_ACCOUNT in credentials:
        # Rows that name the default account (a producer without SPOTLER_ACCOUNT, plain SQL)
        # are sent with its key too, rather than waiting for credentials for ever.
        credentials.setdefault(settings.account, credentials[DEFAULT_ACCOUNT])
    return AccountKeys(credentials)


def accounts_file_stamp(settings: Settings) -> tuple[float, int] | None:
    """What changes when the accounts file does (mtime, size): the cue to read it again."""
    if not settings.accounts_file:
        return None
    try:
        st = os.stat(settings.accounts_file)
    except OSError:
        return None
    return st.st_mtime, st.st_size
