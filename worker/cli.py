"""The `spotler-outbox` command: look at the outbox, act on single orders, import, check, demo.

Every failure the operator can fix ends as one line on stderr and an exit code: 0 fine, 1 the
operation found problems, 2 usage, configuration or an unusable database, 3 no such order.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from models import operations as ops
from models import schema
from models.database import make_engine
from models.errors import (
    ConfigurationError,
    DeliveryError,
    InvalidEvent,
    NotFound,
    OutboxError,
    UsageError,
)
from models.settings import Settings, get_settings
from models.tables import DUE_STATUSES, Status
from models.validation import validate_purchase
from worker import fake_api, importer, metrics
from worker.cli_format import (
    ago,
    confirm,
    human_age,
    parse_cutoff,
    parse_duration,
    positive_int,
    short,
    shown_url,
    stamp,
    table,
)
from worker.client import SpotlerClient
from worker.logs import configure_logging, mask_emails

PROG = "spotler-outbox"
OK, PROBLEMS, USAGE, NOT_FOUND = 0, 1, 2, 3
AUDIENCE_CHECK = """\
To see it arrive: in Spotler Activate, open Audience > Profiles, search for the e-mail address
you gave with --email, open the profile and look for a Purchase event with orderid {orderid}
in its event history (it can take a minute to show).{hashed}"""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextmanager
def database(settings: Settings, *, must_exist: bool = True) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    try:
        path = engine.url.database or ""
        # SQLite would quietly create an empty file and then complain of missing tables.
        if (must_exist and engine.dialect.name == "sqlite" and path not in ("", ":memory:")
                and not path.startswith("file:") and not Path(path).exists()):
            raise ConfigurationError(f"no SQLite outbox at {path}; create it with `{PROG} "
                                     "migrate` or point OUTBOX_DATABASE_URL at it")
        yield engine
    finally:
        engine.dispose()


# --- commands ----------------------------------------------------------------------------

def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with database(settings, must_exist=False):
        pass  # make_engine first: a bad URL is reported as such, not as an Alembic error
    schema.upgrade(settings.database_url)
    print(f"{shown_url(settings.database_url)}: outbox schema is up to date")
    return OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    now = _now()
    with database(settings) as engine, engine.begin() as conn:
        s = ops.status_summary(conn, now)
    c = s.control
    oldest_age = (now - s.oldest_due_created_at).total_seconds() if s.oldest_due_created_at \
        else None
    held = c.not_before if c.not_before and c.not_before > now else None
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
        }, indent=2))
        return OK
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
    return OK


def _next_attempt(row: ops.EventRow, now: dt.datetime) -> str:
    if row.status not in DUE_STATUSES:
        return "-"
    left = (row.next_attempt_at - now).total_seconds()
    if row.status == Status.IN_FLIGHT:
        return f"lease {human_age(left)}" if left > 0 else "lease expired"
    return "due now" if left <= 0 else f"in {human_age(left)}"


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    now = _now()
    cutoff = now - args.older_than if args.older_than else None
    with database(settings) as engine, engine.begin() as conn:
        rows, total = ops.list_events(conn, status=args.status, created_before=cutoff,
                                      orderid=args.orderid, limit=args.limit)
    if not rows:
        print("no matching orders")
        return OK
    print(table(("ID", "ORDERID", "STATUS", "ATTEMPTS", "NEXT ATTEMPT", "HTTP", "LAST ERROR"), [
        (str(r.id), r.orderid, r.status, str(r.attempts), _next_attempt(r, now),
         str(r.last_http_status or "-"), short(r.last_error, 60)) for r in rows]))
    if total > len(rows):
        print(f"(showing {len(rows)} of {total} matching orders; raise --limit to see more)")
    return OK


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    now = _now()
    with database(settings) as engine, engine.begin() as conn:
        row = ops.get_event(conn, args.orderid)
        attempts = ops.attempts_for(conn, row.id)
    try:
        payload = json.dumps(json.loads(row.payload), indent=2, ensure_ascii=False)
    except ValueError:
        payload = row.payload  # a malformed row is shown as stored: that is the thing to see
    print(f"Order {row.orderid} (outbox id {row.id})")
    for label, value in (
        ("status", row.status), ("attempts", str(row.attempts)), ("resends", str(row.resends)),
        ("created", ago(row.created_at, now)), ("updated", ago(row.updated_at, now)),
        ("next attempt", _next_attempt(row, now)), ("delivered", ago(row.delivered_at, now)),
        ("last HTTP", str(row.last_http_status or "-")),
        ("last error", mask_emails(row.last_error or "-")),
    ):
        print(f"  {label:<13} {value}")
    print("Payload:")
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
    with database(settings) as engine:
        if args.orderid:
            with engine.begin() as conn:
                ops.retry_failed(conn, args.orderid, now=_now())
            print(f"order {args.orderid} is pending again and due now (attempts reset to 0)")
            return OK
        with engine.begin() as conn:
            count = ops.count_status(conn, Status.FAILED)
        if not count:
            print("no failed orders to retry")
            return OK
        if not confirm(f"Retry all {count} failed orders now?", args.yes):
            print("nothing changed")
            return PROBLEMS
        with engine.begin() as conn:
            changed = ops.retry_all_failed(conn, now=_now())
    print(f"{changed} failed orders are pending again and due now (attempts reset to 0)")
    return OK


def cmd_resend(args: argparse.Namespace, settings: Settings) -> int:
    with database(settings) as engine:
        with engine.begin() as conn:
            row = ops.get_event(conn, args.orderid)
        if row.status != Status.DELIVERED:
            raise OutboxError(f"order {row.orderid!r} is {row.status}, not delivered; only "
                              "delivered orders can be resent")
        if not confirm(f"Send order {row.orderid} to Spotler again?", args.yes):
            print("nothing changed")
            return PROBLEMS
        now = _now()
        note = f"re-send requested by operator at {now.isoformat(timespec='seconds')}"
        with engine.begin() as conn:
            row = ops.resend_delivered(conn, args.orderid, now=now, note=note)
    print(f"order {row.orderid} will be sent again (resend {row.resends}); it is due now")
    return OK


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    before = parse_cutoff(args.delivered_before, _now())
    with database(settings) as engine:
        purged, attempts = ops.purge(engine, delivered_before=before)
    print(f"purged {purged} orders delivered before {stamp(before)} and {attempts} delivery "
          "attempts no order refers to any more")
    return OK


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    with database(settings) as engine:
        report = importer.import_file(engine, Path(args.file), settings)
    print(f"enqueued {report.enqueued}, already present {report.duplicates}, "
          f"refused {len(report.refused)}")
    for line in importer.refused_lines(report):
        print("  " + line)
    return PROBLEMS if report.refused else OK


def _test_purchase(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if not args.email:
        raise UsageError("--send-test-purchase needs --email (a test profile's address)")
    product: dict[str, Any] = {"id": args.sku, "quantity": 1, "price": 0.0}
    if args.language:
        product["language"] = args.language
    event = {"event": "Purchase", "email": args.email, "products": [product],
             "orderid": f"spotler-outbox-check-{_now().strftime('%Y%m%dT%H%M%SZ')}",
             "currency": args.currency, "timestamp": int(_now().timestamp())}
    try:
        return validate_purchase(event, multi_currency=settings.multi_currency,
                                 multi_language=settings.multi_language,
                                 hash_email=settings.hash_email)
    except InvalidEvent as e:
        raise UsageError(mask_emails("; ".join(e.problems))) from e


def _answer(e: DeliveryError) -> str:
    if e.http_status is None:
        return f"no HTTP answer: {e}"
    return f"HTTP {e.http_status}: {mask_emails(e.excerpt) or '(empty body)'}"


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    event = _test_purchase(args, settings) if args.send_test_purchase else None
    client = SpotlerClient(settings)
    try:
        print(f"Spotler API {client.base_url}, account {settings.account}")
        try:
            accepted = client.verify_auth()
            print(f"verifyAuth: OK, Spotler answered HTTP {accepted.http_status}: "
                  f"{mask_emails(accepted.excerpt)}")
        except DeliveryError as e:
            print(f"verifyAuth: FAILED, Spotler answered {_answer(e)}")
            return PROBLEMS
        if event is None:
            return OK
        print("Sending one test purchase:\n" + mask_emails(json.dumps(event, indent=2)))
        try:
            accepted = client.track([event])
            print(f"track: Spotler answered HTTP {accepted.http_status}: "
                  f"{mask_emails(accepted.excerpt) or '(empty body)'}")
        except DeliveryError as e:
            print(f"track: FAILED, Spotler answered {_answer(e)}")
            return PROBLEMS
        hashed = ("\nSPOTLER_HASH_EMAIL is on: the profile holds the SHA-256 of the address."
                  if settings.hash_email else "")
        print(AUDIENCE_CHECK.format(orderid=event["orderid"], hashed=hashed))
        return OK
    finally:
        client.close()


def cmd_fake_api(args: argparse.Namespace, settings: Settings) -> int:
    try:
        faults = fake_api.Faults(
            error_rate=args.error_rate, error_status=args.error_status,
            latency_ms=args.latency_ms, timeout_rate=args.timeout_rate,
            timeout_seconds=args.timeout_seconds, rate_limit_seconds=args.rate_limit_seconds,
            auth_failure=args.auth_failure, accept_fewer=args.accept_fewer,
            reject_orderids=list(args.reject_orderid), seed=args.seed)
    except ValueError as e:
        raise UsageError(str(e)) from e
    try:
        fake_api.run_fake_api(args.host, args.port, account=args.account or settings.account
                              or "demo-account",
                              api_key=args.api_key or settings.api_key or "demo-key",
                              faults=faults)
    except ValueError as e:
        raise UsageError(str(e)) from e
    except OSError as e:
        raise ConfigurationError(f"cannot listen on {args.host}:{args.port}: "
                                 f"{e.strerror or e}") from e
    return OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from worker.demo import run_demo  # not needed by any other command

    return run_demo(orders=int(args.orders), directory=Path(args.dir), timeout=args.timeout)


# --- the parser --------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Settings], int]
_FAULT_FLAGS = (("--error-rate", float, 0.0), ("--error-status", int, 503),
                ("--latency-ms", float, 0.0), ("--timeout-rate", float, 0.0),
                ("--timeout-seconds", float, 60.0), ("--rate-limit-seconds", float, 0.0))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__,
        epilog="Settings come from the environment: OUTBOX_DATABASE_URL, SPOTLER_API_URL, "
               "SPOTLER_ACCOUNT, SPOTLER_API_KEY, ...")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(handler=handler)
        return p

    command("migrate", cmd_migrate, "create or upgrade the outbox tables")
    p = command("status", cmd_status, "rows per status, backlog, pause and rate-limit state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("list", cmd_list, "list outbox rows, oldest first")
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--older-than", type=parse_duration, metavar="AGE",
                   help="created at least this long ago: 90s, 10m, 2h, 1d, 2w")
    p.add_argument("--orderid", help="exact orderid, or a pattern with *")
    p.add_argument("--limit", type=positive_int, default=50)
    p = command("show", cmd_show, "one order: its row, its payload and every delivery attempt")
    p.add_argument("orderid", metavar="ORDERID")
    p = command("retry", cmd_retry, "make failed orders pending again, due now")
    p.add_argument("orderid", metavar="ORDERID", nargs="?")
    p.add_argument("--all-failed", action="store_true", help="every failed order (asks first)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = command("resend", cmd_resend, "send a delivered order again, on purpose (recorded)")
    p.add_argument("orderid", metavar="ORDERID")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = command("purge", cmd_purge,
                "delete old delivered orders and the attempts left without orders")
    p.add_argument("--delivered-before", required=True, metavar="AGE_OR_DATE",
                   help="a duration such as 30d, or an ISO date/datetime (UTC unless given)")
    p = command("import", cmd_import, "enqueue Purchase events from a JSON Lines or CSV file",
                epilog=importer.CSV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE")
    p = command("check", cmd_check, "verify the Spotler credentials, optionally send a test")
    p.add_argument("--send-test-purchase", action="store_true")
    p.add_argument("--email", help="the test profile's e-mail address")
    p.add_argument("--sku", default="SPOTLER-OUTBOX-CHECK", help="the test product's id")
    p.add_argument("--currency", default="EUR")
    p.add_argument("--language", help="the product's language, e.g. nl-NL")
    p = command("fake-api", cmd_fake_api, "serve a fake Spotler API on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8900)
    p.add_argument("--account", help="default: SPOTLER_ACCOUNT, else demo-account")
    p.add_argument("--api-key", help="default: SPOTLER_API_KEY, else demo-key")
    for flag, kind, default in _FAULT_FLAGS:
        p.add_argument(flag, type=kind, default=default)
    p.add_argument("--auth-failure", action="store_true")
    p.add_argument("--accept-fewer", action="store_true")
    p.add_argument("--reject-orderid", action="append", default=[], metavar="ORDERID")
    p.add_argument("--seed", type=int)
    p = command("metrics", metrics.cmd_metrics, "serve Prometheus metrics read from the outbox")
    p.add_argument("--host", default="127.0.0.1", help="keep it on loopback or a private net")
    p.add_argument("--port", type=int, default=9808)
    p = command("demo", cmd_demo, "run the whole pipeline locally: SQLite, fake API, a worker")
    p.add_argument("--orders", type=positive_int, default=500)
    p.add_argument("--dir", default="demo-run", help="where the SQLite files and the worker "
                   "log go (default ./demo-run); a previous demo's files there are replaced")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for delivery")
    return parser


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _database_problem(e: sa.exc.DBAPIError, url: str) -> str:
    detail = (str(e.orig).strip().splitlines() or [type(e.orig).__name__])[0]
    password = make_url(url).password if url else None
    if password:
        detail = detail.replace(str(password), "***")
    if re.search(r"no such table|relation .* does not exist|table .* doesn't exist", detail,
                 re.IGNORECASE):
        return f"the outbox tables are missing in {shown_url(url)} ({detail}); " \
               f"run `{PROG} migrate`"
    return f"cannot use the database at {shown_url(url)}: {detail}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    settings: Settings | None = None
    try:
        args = parser.parse_args(argv)
        settings = get_settings()
        configure_logging(settings, level=logging.WARNING)
        return int(args.handler(args, settings))
    except SystemExit as e:  # argparse: usage errors and --help
        return e.code if isinstance(e.code, int) else USAGE
    except NotFound as e:
        return _fail(str(e), NOT_FOUND)
    except (ConfigurationError, UsageError) as e:
        return _fail(str(e), USAGE)
    except OutboxError as e:
        return _fail(str(e), PROBLEMS)
    except sa.exc.DBAPIError as e:
        return _fail(_database_problem(e, settings.database_url if settings else ""), USAGE)
    except sa.exc.ArgumentError as e:
        return _fail(f"OUTBOX_DATABASE_URL: {e}", USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
