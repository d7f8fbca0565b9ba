"""What `status` adds for a shop with several stores: each account's rows, pause and hold, and
the accounts whose rows wait for credentials."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

import sqlalchemy as sa

from spotler_outbox.models import operations as ops
from spotler_outbox.models.accounts import DEFAULT_ACCOUNT, account_keys, row_account, shown_account
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import DUE_STATUSES
from spotler_outbox.worker.console.format import ago, table
from spotler_outbox.worker.logs import mask_emails


def chosen_account(args: argparse.Namespace, settings: Settings) -> str | None:
    """The --account given, as the rows store it, or None for every account."""
    account = getattr(args, "account", None)
    return None if account is None else row_account(account, settings)


def dispatch_state(summary: ops.AccountSummary, has_credentials: bool, now: dt.datetime) -> str:
    c = summary.control
    waiting = sum(summary.counts[s] for s in DUE_STATUSES)
    if not has_credentials:
        return f"NO CREDENTIALS: {waiting} rows wait for them" if waiting else "no credentials"
    if c.paused:
        return f"PAUSED: {mask_emails(c.paused_reason or '')}"
    if c.rate_limited(now):
        return f"held until {ago(c.not_before, now)}"
    return "running"


def account_rows(conn: sa.Connection, settings: Settings, account: str | None,
                 now: dt.datetime) -> list[dict[str, Any]]:
    """Each account (or the one chosen) with its counts and dispatch state."""
    credentials = account_keys(settings)
    rows = []
    for s in ops.accounts_summary(conn):
        if account is not None and s.account != account:
            continue
        if s.account == DEFAULT_ACCOUNT and not sum(s.counts.values()) \
                and DEFAULT_ACCOUNT not in credentials and not s.control.paused:
            continue  # a deployment with only SPOTLER_ACCOUNTS_FILE: nothing to say about ''
        has = s.account in credentials
        held = s.control.not_before if s.control.rate_limited(now) else None
        rows.append({
            "account": s.account, "name": shown_account(s.account, settings),
            "counts": s.counts, "credentials": has, "dispatch": dispatch_state(s, has, now),
            "paused": s.control.paused,
            "paused_reason": mask_emails(s.control.paused_reason or "") or None,
            "rate_limited_until": held.isoformat() if held else None,
        })
    return rows


def print_accounts(rows: list[dict[str, Any]]) -> None:
    print("Accounts:")
    print(table(("  ACCOUNT", "PENDING", "IN FLIGHT", "DELIVERED", "FAILED", "DISPATCH"), [
        ("  " + r["name"], str(r["counts"]["pending"]), str(r["counts"]["in_flight"]),
         str(r["counts"]["delivered"]), str(r["counts"]["failed"]), r["dispatch"])
        for r in rows]))
