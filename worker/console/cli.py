"""The `spotler-outbox` command: look at the outbox, act on single orders, import, check, demo.

Every failure the operator can fix ends as one line on stderr and an exit code: 0 fine, 1 the
operation found problems, 2 usage, configuration or an unusable database, 3 no such order.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from spotler_outbox import migrations
from spotler_outbox.models import grants
from spotler_outbox.models.accounts import account_keys
from spotler_outbox.models.database import describe_database_error, shown_url
from spotler_outbox.models.errors import ConfigurationError, NotFound, OutboxError, UsageError
from spotler_outbox.models.settings import Settings, get_settings
from spotler_outbox.models.tables import Status
from spotler_outbox.models.version import installed_version
from spotler_outbox.worker.console import exporter, importer
from spotler_outbox.worker.console.check import cmd_check
from spotler_outbox.worker.console.forget import cmd_forget
from spotler_outbox.worker.console.format import parse_duration, positive_int
from spotler_outbox.worker.console.outbox_commands import (
    cmd_list,
    cmd_purge,
    cmd_resend,
    cmd_retry,
    cmd_show,
    cmd_status,
    database_url,
    outbox,
)
from spotler_outbox.worker.fake_spotler import server as fake_api
from spotler_outbox.worker.logs import configure_logging

PROG = "spotler-outbox"
OK, PROBLEMS, USAGE, NOT_FOUND = 0, 1, 2, 3


# --- commands ----------------------------------------------------------------------------

def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with outbox(settings, must_exist=False):
        pass  # make_engine first: a bad URL is reported as such, not as an Alembic error
    migrations.upgrade(settings.database_url)
    print(f"{shown_url(settings.database_url)}: outbox schema is up to date")
    return OK


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    with outbox(settings) as engine:
        if args.dry_run:
            report = importer.preview_file(engine, Path(args.file), settings)
        else:
            report = importer.import_file(engine, Path(args.file), settings)
    if args.dry_run:
        print(f"dry run, nothing written: would enqueue {report.enqueued}, already present "
              f"{report.duplicates}, would refuse {len(report.refused)}")
    else:
        print(f"enqueued {report.enqueued}, already present {report.duplicates}, "
              f"refused {len(report.refused)}")
    for line in importer.refused_lines(report):
        print("  " + line)
    return PROBLEMS if report.refused else OK


def cmd_grants(args: argparse.Namespace, settings: Settings) -> int:
    url = sa.engine.make_url(database_url(settings))
    names = {role: getattr(args, role) for role in grants.ROLES}
    print(grants.grants_script(url.get_backend_name(), url.database or "", grants.logins(names),
                               schema=args.schema, host=args.host), end="")
    return OK


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
                              faults=faults, accounts=_file_accounts(settings))
    except ValueError as e:
        raise UsageError(str(e)) from e
    except OSError as e:
        raise ConfigurationError(f"cannot listen on {args.host}:{args.port}: "
                                 f"{e.strerror or e}") from e
    return OK


def _file_accounts(settings: Settings) -> dict[str, str]:
    """The stores of SPOTLER_ACCOUNTS_FILE, which the fake API serves beside its account."""
    if not settings.accounts_file:
        return {}
    return {credentials[0]: credentials[1] for account, credentials
            in account_keys(settings).credentials.items() if account}


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from spotler_outbox.worker.console.demo import run_demo  # not needed by any other command

    return run_demo(orders=int(args.orders), directory=Path(args.dir), timeout=args.timeout)


# --- the parser --------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Settings], int]
_FAULT_FLAGS = (
    ("--error-rate", float, 0.0, "share of track requests answered with --error-status (0-1)"),
    ("--error-status", int, 503, "the status of those answers (default 503)"),
    ("--latency-ms", float, 0.0, "wait this long before each answer"),
    ("--timeout-rate", float, 0.0, "share of track requests held for --timeout-seconds "
                                   "(their events are still taken)"),
    ("--timeout-seconds", float, 60.0, "how long such a request is held"),
    ("--rate-limit-seconds", float, 0.0, "answer 429, with Retry-After, for this many seconds "
                                         "from the start"),
)


def _account_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--account", metavar="ACCOUNT",
                   help="one Spotler account (store) only; default: every account")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__,
        epilog="Settings come from the environment: OUTBOX_DATABASE_URL, SPOTLER_API_URL, "
               "SPOTLER_ACCOUNT, SPOTLER_API_KEY, ...")
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(handler=handler)
        return p

    command("migrate", cmd_migrate, "create or upgrade the outbox tables")
    p = command("status", cmd_status, "rows per status, backlog, pause and rate-limit state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _account_option(p)
    p = command("list", cmd_list, "list outbox rows, oldest first")
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--older-than", type=parse_duration, metavar="AGE",
                   help="created at least this long ago: 90s, 10m, 2h, 1d, 2w")
    p.add_argument("--orderid", help="exact orderid, or a pattern with *")
    p.add_argument("--limit", type=positive_int, default=50)
    _account_option(p)
    p = command("show", cmd_show, "one order: its row, its payload and every delivery attempt")
    p.add_argument("orderid", metavar="ORDERID")
    _account_option(p)
    p = command("retry", cmd_retry, "make failed orders pending again, due now")
    p.add_argument("orderid", metavar="ORDERID", nargs="?")
    p.add_argument("--all-failed", action="store_true", help="every failed order (asks first)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _account_option(p)
    p = command("resend", cmd_resend, "send a delivered order again, on purpose (recorded)")
    p.add_argument("orderid", metavar="ORDERID")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _account_option(p)
    p = command("purge", cmd_purge,
                "empty the payloads of orders delivered before a date, keeping each one's "
                "orderid (so enqueueing it again sends nothing), and delete the attempts left "
                "without orders; what the workers' retention does hourly")
    p.add_argument("--delivered-before", required=True, metavar="AGE_OR_DATE",
                   help="a duration such as 30d, or an ISO date/datetime (UTC unless given)")
    _account_option(p)
    p = command("forget", cmd_forget, "erase one person's e-mail address (or its SHA-256) "
                "and the payloads of their orders from the outbox (GDPR erasure)")
    p.add_argument("--email", required=True, metavar="ADDRESS",
                   help="the address, or the SHA-256 of the lower-cased address")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = command("import", cmd_import, "enqueue Purchase events from a JSON Lines or CSV file",
                epilog=importer.CSV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and report what would be enqueued or refused; write nothing")
    p = command("check", cmd_check, "verify the Spotler credentials, optionally send a test")
    p.add_argument("--send-test-purchase", action="store_true")
    p.add_argument("--email", help="the test profile's e-mail address")
    p.add_argument("--sku", default="SPOTLER-OUTBOX-CHECK", help="the test product's id")
    p.add_argument("--currency", default="EUR")
    p.add_argument("--language", help="the product's language, e.g. nl-NL")
    p.add_argument("--orderid", help="the test order's id (default: spotler-outbox-check-TIME)")
    p.add_argument("--yes", action="store_true",
                   help="really send the test purchase (without it, only shows it)")
    p.add_argument("--account", metavar="ACCOUNT",
                   help="the Spotler account (store) whose key to check, from "
                        "SPOTLER_ACCOUNTS_FILE; default: the default account (SPOTLER_ACCOUNT)")
    p = command("grants", cmd_grants, "print SQL creating least-privilege users for the order "
                "system, the workers and an operator (OUTBOX_DATABASE_URL names the database)")
    for role, name in grants.DEFAULT_NAMES.items():
        p.add_argument(f"--{role}", default=name, metavar="NAME", help=f"default {name}")
    p.add_argument("--schema", default="public", help="PostgreSQL: the outbox tables' schema")
    p.add_argument("--host", default="%", help="MariaDB/MySQL: the users' host part")
    p = command("fake-api", cmd_fake_api, "serve a fake Spotler API on loopback (what it "
                "received: GET /_fake/received; see docs/integrating.md)")
    p.add_argument("--host", default="127.0.0.1", help="a loopback address only")
    p.add_argument("--port", type=int, default=8900)
    p.add_argument("--account", help="default: SPOTLER_ACCOUNT, else demo-account")
    p.add_argument("--api-key", help="default: SPOTLER_API_KEY, else demo-key")
    for flag, kind, default, what in _FAULT_FLAGS:
        p.add_argument(flag, type=kind, default=default, help=what)
    p.add_argument("--auth-failure", action="store_true",
                   help="refuse every key: 401 to track and verifyAuth")
    p.add_argument("--accept-fewer", action="store_true",
                   help="answer 200 but count one event fewer than sent (a partial answer)")
    p.add_argument("--reject-orderid", action="append", default=[], metavar="ORDERID",
                   help="answer 400 to any request carrying this order, naming it "
                        "(repeat for more)")
    p.add_argument("--seed", type=int, help="seed of the error and timeout dice")
    p = command("metrics", exporter.cmd_metrics, "serve Prometheus metrics read from the outbox")
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
        return _fail(describe_database_error(e, settings.database_url if settings else ""),
                     USAGE)
    except sa.exc.ArgumentError as e:
        return _fail(f"OUTBOX_DATABASE_URL: {e}", USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
