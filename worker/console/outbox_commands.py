"""The console commands that read and change outbox rows: status, list, show, retry, resend,
purge. Each takes the parsed arguments and the settings and returns an exit code."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Engine

from spotler_outbox.models import operations as ops
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.database import make_engine, require_existing_sqlite, shown_url
from spotler_outbox.models.errors import ConfigurationError, OutboxError, UsageError
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import DUE_STATUSES, Status
from spotler_outbox.worker.console.account_status import (
    account_rows,
    chosen_account,
    print_accounts,
)
from spotler_outbox.worker.console.format import (
    ago,
    confirm,
    human_age,
    parse_cutoff,
    short,
    stamp,
    table,
)
from spotler_outbox.worker.logs import mask_emails

OK, PROBLEMS = 0, 1


def database_url(settings: Settings) -> str:
    """OUTBOX_DATABASE_URL, which has no default: a guess would create an empty outbox (a
    ./spotler_outbox.db) that no order system writes to."""
    if not settings.database_url:
        raise ConfigurationError(
            "OUTBOX_DATABASE_URL is not set: point it at the shop's database, e.g. "
            "postgresql+psycopg://user:password@host/shop (`spotler-outbox demo` brings its own)")
    return settings.database_url


@contextmanager
def outbox(settings: Settings, *, must_exist: bool = True) -> Iterator[Engine]:
    """An engine on the configured outbox, disposed on the way out."""
    engine = make_engine(database_url(settings))
    try:
        if must_exist:
            require_existing_sqlite(engine)
        yield engine
    finally:
        engine.dispose()


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    now = utc_now()
    account = chosen_account(args, settings)
    with outbox(settings) as engine, engine.begin() as conn:
        s = ops.status_summary(conn, now, account)
        accounts = account_rows(conn, settings, account, now)
    c = s.control
    oldest_age = (now - s.oldest_due_created_at).total_seconds() if s.oldest_due_created_at \
        else None
    held = c.not_before if c.not_before and c.not_before > now else None
    problems = status_problems(s.counts, accounts)
    if args.json:
        def iso(v: dt.datetime | None) -> str | None:
            return v.isoformat() if v else None
        print(json.dumps({
            "counts": s.counts, "total": sum(s.counts.values()),
            "oldest_due_orderid": s.oldest_due_orderid,
            "oldest_due_created_at": iso(s.oldest_due_created_at),
            "oldest_due_age_seconds": oldest_age,
            "last_delivered_at": iso(s.last_delivered_at),
            "deliveries_per_minute_5m": round(s.deliveries_per_minute(), 2),
            "paused": c.paused, "paused_reason": mask_emails(c.paused_reason or "") or None,
            "paused_since": iso(c.paused_since), "rate_limited_until": iso(held),
            "accounts": accounts, "problems": problems,
        }, indent=2))
        return PROBLEMS if problems else OK
    print(f"Outbox {shown_url(settings.database_url)}")
    for status, count in s.counts.items():
        print(f"  {status:<10} {count:>9}")
    oldest = "none" if oldest_age is None else \
        f"{human_age(oldest_age)} old (orderid {s.oldest_due_orderid})"
    dispatch = "running" if not c.paused else \
        f"PAUSED since {stamp(c.paused_since)}: {mask_emails(c.paused_reason or '')}"
    print(f"Oldest due row:      {oldest}")
    print(f"Last delivery:       {ago(s.last_delivered_at, now)}")
    print(f"Deliveries/minute:   {s.deliveries_per_minute():.1f} (last 5 minutes)")
    print(f"Dispatch:            {dispatch}")
    print(f"Rate-limit hold:     {'none' if held is None else 'until ' + ago(held, now)}")
    if len(accounts) > 1 or any(not (r["credentials"] and r["account"] == "")
                                for r in accounts):
        print_accounts(accounts)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return PROBLEMS if problems else OK


def status_problems(counts: dict[str, int], accounts: list[dict[str, Any]]) -> list[str]:
    """What needs an operator (exit 1): failed rows, a paused account, rows that wait for
    credentials nobody has given. A rate-limit hold passes by itself and is no problem."""
    problems = []
    if counts.get(Status.FAILED, 0):
        problems.append(f"{counts[Status.FAILED]} failed orders (spotler-outbox list --status "
                        "failed shows why; retry them once fixed)")
    for r in accounts:
        if r["paused"]:
            problems.append(f"dispatch for {r['name']} is paused: {r['paused_reason']}")
        waiting = sum(r["counts"][status] for status in DUE_STATUSES)
        if not r["credentials"] and waiting:
            problems.append(f"{waiting} rows of {r['name']} wait for credentials")
    return problems


def _next_attempt(row: ops.EventRow, now: dt.datetime) -> str:
    if row.status not in DUE_STATUSES:
        return "-"
    left = (row.next_attempt_at - now).total_seconds()
    if row.status == Status.IN_FLIGHT:
        return f"lease {human_age(left)}" if left > 0 else "lease expired"
    return "due now" if left <= 0 else f"in {human_age(left)}"


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    now = utc_now()
    cutoff = now - args.older_than if args.older_than else None
    with outbox(settings) as engine, engine.begin() as conn:
        rows, total = ops.list_events(conn, status=args.status, created_before=cutoff,
                                      orderid=args.orderid, limit=args.limit,
                                      account=chosen_account(args, settings))
    if not rows:
        print("no matching orders")
        return OK
    # The account column only where there is more than the default account to tell apart.
    several = any(r.account for r in rows)
    accounts = [(r.account or "(default)",) if several else () for r in rows]
    print(table(("ID", "ORDERID", "STATUS", "ATTEMPTS", "NEXT ATTEMPT", "HTTP", "LAST ERROR")
                + (("ACCOUNT",) if several else ()), [
        (str(r.id), r.orderid, r.status, str(r.attempts), _next_attempt(r, now),
         str(r.last_http_status or "-"), short(r.last_error, 60), *a)
        for r, a in zip(rows, accounts, strict=True)]))
    if total > len(rows):
        print(f"(showing {len(rows)} of {total} matching orders; raise --limit to see more)")
    return OK


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    now = utc_now()
    with outbox(settings) as engine, engine.begin() as conn:
        row = ops.get_event(conn, args.orderid, chosen_account(args, settings))
        attempts = ops.attempts_for(conn, row.id)
    try:
        payload = json.dumps(json.loads(row.payload), indent=2, ensure_ascii=False)
    except ValueError:
        payload = row.payload  # a malformed row is shown as stored: that is the thing to see
    print(f"Order {row.orderid} (outbox id {row.id})")
    for label, value in (
        *((("account", row.account),) if row.account else ()),
        ("status", row.status), ("attempts", str(row.attempts)), ("resends", str(row.resends)),
        ("created", ago(row.created_at, now)), ("updated", ago(row.updated_at, now)),
        ("next attempt", _next_attempt(row, now)), ("delivered", ago(row.delivered_at, now)),
        ("last HTTP", str(row.last_http_status or "-")),
        ("last error", mask_emails(row.last_error or "-")),
    ):
        print(f"  {label:<13} {value}")
    print("Payload:")
    if row.purged_at is not None:
        payload = (f"(emptied {stamp(row.purged_at)} by retention or an erasure; the orderid "
                   "is kept so that enqueueing it again sends nothing)")
    print(mask_emails(payload))
    print(f"Attempts ({len(attempts)}):")
    if attempts:
        print(table(("  TIME", "#", "BATCH", "HTTP", "OUTCOME", "DURATION", "RESPONSE"), [
            ("  " + stamp(a.started_at), str(a.attempt_number), str(a.event_count),
             str(a.http_status or "-"), a.outcome, f"{a.duration_ms} ms",
             short(a.response_excerpt, 70)) for a in attempts]))
    return OK


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.orderid) == bool(args.all_failed):
        raise UsageError("give one ORDERID or --all-failed")
    account = chosen_account(args, settings)
    with outbox(settings) as engine:
        if args.orderid:
            with engine.begin() as conn:
                ops.retry_failed(conn, args.orderid, now=utc_now(), account=account)
            print(f"order {args.orderid} is pending again and due now (attempts reset to 0)")
            return OK
        with engine.begin() as conn:
            count = ops.count_status(conn, Status.FAILED, account)
        if not count:
            print("no failed orders to retry")
            return OK
        if not confirm(f"Retry all {count} failed orders now?", args.yes):
            print("nothing changed")
            return PROBLEMS
        with engine.begin() as conn:
            changed = ops.retry_all_failed(conn, now=utc_now(), account=account)
    print(f"{changed} failed orders are pending again and due now (attempts reset to 0)")
    return OK


def cmd_resend(args: argparse.Namespace, settings: Settings) -> int:
    account = chosen_account(args, settings)
    with outbox(settings) as engine:
        with engine.begin() as conn:
            row = ops.get_event(conn, args.orderid, account)
        if row.status != Status.DELIVERED:
            raise OutboxError(f"order {row.orderid!r} is {row.status}, not delivered; only "
                              "delivered orders can be resent")
        if not confirm(f"Send order {row.orderid} to Spotler again?", args.yes):
            print("nothing changed")
            return PROBLEMS
        now = utc_now()
        note = f"re-send requested by operator at {now.isoformat(timespec='seconds')}"
        with engine.begin() as conn:
            row = ops.resend_delivered(conn, args.orderid, now=now, note=note,
                                       account=row.account)
    print(f"order {row.orderid} will be sent again (resend {row.resends}); it is due now")
    return OK


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    before = parse_cutoff(args.delivered_before, utc_now())
    with outbox(settings) as engine:
        purged, attempts = ops.purge(engine, delivered_before=before,
                                     account=chosen_account(args, settings))
    print(f"purged {purged} orders delivered before {stamp(before)} and {attempts} delivery "
          "attempts no order refers to any more; each purged order keeps its orderid and "
          "delivery time, so enqueueing it again sends nothing")
    return OK


