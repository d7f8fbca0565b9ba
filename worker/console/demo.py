"""`spotler-outbox demo`: the whole pipeline on one machine, with no server to install.

A SQLite outbox, a Celery broker in SQLite (kombu's SQLAlchemy transport), the fake Spotler
API in this process and a real Celery worker (its sweeper timer inside) in a child process: sample
orders go in through `enqueue_purchase`, and the fake API's record shows they each arrived once.
Then the operator's loop: one order Spotler refuses is parked with its reason, `show` tells
why, and after the fix `retry` delivers it.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from argparse import Namespace
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from spotler_outbox import migrations
from spotler_outbox.models import operations
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import Status
from spotler_outbox.worker.console import outbox_commands
from spotler_outbox.worker.console.importer import (
    ImportReport,
    ProgressBar,
    Record,
    enqueue_records,
)
from spotler_outbox.worker.fake_spotler.faults import Faults
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi, start_fake_api
from spotler_outbox.worker.logs import mask_emails

ACCOUNT = "demo-account"
SWEEP_SECONDS = 0.5
STOP_GRACE_SECONDS = 20.0
DEMO_FILES = ("outbox.db", "outbox.db-wal", "outbox.db-shm", "broker.db", "broker.db-journal",
              "broker.db-wal", "broker.db-shm", "beat-schedule", "worker.log")
PRODUCTS = [("SKU-TEA", 4.95), ("SKU-MUG", 12.50), ("SKU-KETTLE", 39.00), ("SKU-BISCUIT", 2.25),
            ("SKU-TEAPOT", 24.99)]
INVALID_SAMPLES: list[dict[str, Any]] = [
    {"email": "not-an-address", "orderid": "demo-invalid-1", "currency": "EURO",
     "products": [{"id": "SKU-TEA", "quantity": 0}]},
    {"email": "late.payer@example.com", "orderid": "demo-invalid-2", "products": [],
     "timestamp": 1764237600000},
]
# Valid for the outbox, refused by the demo's Spotler until its product exists there: the fake
# API plays that refusal for this orderid (its reject_orderids fault), until the "fix".
REFUSED_ORDERID = "demo-giftcard-1"
REFUSED_ORDER: dict[str, Any] = {
    "event": "Purchase", "email": "gift.buyer@example.com", "orderid": REFUSED_ORDERID,
    "products": [{"id": "SKU-GIFTCARD", "quantity": 1, "price": 25.0}], "currency": "EUR"}


@dataclass(frozen=True)
class DemoPaths:
    directory: Path

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.directory / 'outbox.db'}"

    @property
    def broker_url(self) -> str:
        return f"sqla+sqlite:///{self.directory / 'broker.db'}"

    @property
    def log(self) -> Path:
        return self.directory / "worker.log"


def sample_orders(count: int, seed: int = 20261127) -> list[Record]:
    """`count` valid orders, then the invalid samples; `line` is the sample's number."""
    dice = random.Random(seed)
    start = int(time.time()) - count
    records = []
    for n in range(1, count + 1):
        products = [{"id": sku, "quantity": dice.randint(1, 3), "price": price}
                    for sku, price in dice.sample(PRODUCTS, dice.randint(1, 3))]
        records.append(Record(n, {
            "event": "Purchase", "email": f"customer{n}@example.com",
            "orderid": f"demo-{n:05d}", "products": products, "currency": "EUR",
            "timestamp": start + n, "firstname": dice.choice(["Anna", "Bram", "Chris", "Daan"]),
        }))
    records.append(Record(count + 1, dict(REFUSED_ORDER)))
    first_invalid = count + 2
    records += [Record(first_invalid + i, dict(event)) for i, event in enumerate(INVALID_SAMPLES)]
    return records


def worker_environment(settings: Settings) -> dict[str, str]:
    """The child's environment: this one without any outbox setting, then the demo's."""
    # The child must read the demo's settings, not whatever the operator exported for the
    # real outbox; everything else (PATH, locale, venv) is passed on as it is.
    env = {k: v for k, v in os.environ.items()
           if k not in {f.metadata["env"] for f in fields(Settings)}}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        env[f.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def running_worker(settings: Settings, paths: DemoPaths) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "celery", "-A", "spotler_outbox.worker", "worker",
               "--pool", "solo", "--loglevel", "INFO", "--hostname", "demo@%h", "--without-gossip",
               "--without-mingle", "--without-heartbeat"]
    with paths.log.open("wb") as log:
        # A session of its own: a Ctrl-C meant for the demo must not reach the worker mid-batch;
        # the demo stops it itself, with a warm shutdown, in stop_worker.
        process = subprocess.Popen(command, env=worker_environment(settings),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    try:
        yield process
    finally:
        stop_worker(process)


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # SIGINT, Celery's warm shutdown from a terminal: worker.tasks re-binds SIGTERM in the pool
    # process to finish the batch, and a solo pool's pool process is the worker itself.
    process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        # Its own process group holds only the worker.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_until_ready(process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> float:
    """Seconds until the worker logged that it is ready (Celery's "<name> ready." line).

    Only so that the timing below measures delivery, not Celery's start-up: past the timeout
    the demo goes on, as the rows simply wait in the outbox for the worker.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout and process.poll() is None:
        with suppress(OSError):
            if " ready." in log.read_text(encoding="utf-8", errors="replace"):
                break
        time.sleep(0.1)
    return time.monotonic() - started


def reset_directory(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:
        (directory / name).unlink(missing_ok=True)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e.strerror})"
    return mask_emails("\n".join(text.splitlines()[-lines:]))


def wait_until_settled(engine: Engine, process: subprocess.Popen[bytes], expected: int,
                       timeout: float) -> tuple[dict[str, int], str | None]:
    """Poll the outbox until nothing is pending or in flight; the counts, and why it gave up."""
    bar = ProgressBar(expected, "delivering")
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.begin() as conn:
                counts = operations.status_summary(conn, dt.datetime.now(dt.UTC)).counts
            settled = counts[Status.DELIVERED] + counts[Status.FAILED]
            bar.update(settled)
            if counts[Status.PENDING] + counts[Status.IN_FLIGHT] == 0:
                return counts, None
            if process.poll() is not None:
                return counts, f"the worker stopped early (exit code {process.returncode})"
            if time.monotonic() > deadline:
                return counts, f"not settled after {timeout:g} s"
            time.sleep(0.2)
    finally:
        bar.close()


def exactly_once(fake: RunningFakeApi, expected: set[str]) -> tuple[bool, str]:
    received: dict[str, int] = fake.state.received()["orderids"]
    missing = expected - received.keys()
    repeated = sorted(o for o, n in received.items() if n > 1)
    unexpected = sorted(received.keys() - expected)
    if not (missing or repeated or unexpected):
        return True, f"yes: each of the {len(expected)} orderids arrived exactly once"
    parts = []
    if missing:
        parts.append(f"{len(missing)} never arrived (e.g. {sorted(missing)[:3]})")
    if repeated:
        parts.append(f"{len(repeated)} arrived more than once (e.g. {repeated[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} arrived that were not sent (e.g. {unexpected[:3]})")
    return False, "NO: " + "; ".join(parts)


def print_refused(report: ImportReport) -> None:
    if not report.refused:
        return
    print(f"Refused at enqueue, as they should be ({len(report.refused)} invalid samples):")
    for record in report.refused:
        orderid = record.event.get("orderid") if record.event else None
        print(f"  {orderid}:")
        for problem in record.problems:
            print(f"    - {mask_emails(problem)}")


def operator_loop(settings: Settings, fake: RunningFakeApi, engine: Engine,
                  process: subprocess.Popen[bytes], expected: int,
                  timeout: float) -> tuple[dict[str, int], str | None]:
    """Show the refused order parked with its reason, fix it, retry it; the final counts."""
    command = Path(sys.executable).parent / "spotler-outbox"
    print(f"\nSpotler refused one order; it is parked as failed with the reason, the rest went."
          f"\n$ {command} show {REFUSED_ORDERID}")
    outbox_commands.cmd_show(Namespace(orderid=REFUSED_ORDERID), settings)
    print("\nThe fix lies outside the outbox (here: the product is created in Spotler, so the "
          "fake API stops refusing it). Then the order goes again:")
    fake.state.set_faults(Faults())
    print(f"$ {command} retry {REFUSED_ORDERID}")
    outbox_commands.cmd_retry(Namespace(orderid=REFUSED_ORDERID, all_failed=False, yes=False),
                              settings)
    return wait_until_settled(engine, process, expected, timeout)


def print_next_steps(database_url: str) -> None:
    print("Look around (the worker has stopped; the outbox stays):")
    print(f"  export OUTBOX_DATABASE_URL={database_url}")
    # The full path: after `./dev demo` the virtualenv's bin is not on the user's PATH.
    command = Path(sys.executable).parent / "spotler-outbox"
    for args in ("status", "list --limit 10", f"show {REFUSED_ORDERID}"):
        print(f"  {command} {args}")
    print('Next, in README.md: "Integrating" (enqueue from your order system), "Operations" '
          'with its "Flower" part (what runs by itself, what to watch and do), and "Metrics '
          'and alerts" (the exporter, the alert rules and the Grafana dashboard in ops/).')


def run_demo(*, orders: int = 500, directory: Path = Path("demo-run"),
             timeout: float = 120.0) -> int:
    if orders < 1:
        raise ConfigurationError(f"--orders: must be at least 1, got {orders}")
    paths = DemoPaths(directory.resolve())
    reset_directory(paths.directory)
    print(f"Demo in {paths.directory} (its outbox and broker are SQLite files; no server needed)")
    migrations.upgrade(paths.database_url)
    print(f"  outbox migrated:   {paths.database_url}")
    api_key = secrets.token_urlsafe(24)  # never shown; only the worker's environment has it
    with start_fake_api(account=ACCOUNT, api_key=api_key,
                        faults=Faults(reject_orderids=[REFUSED_ORDERID])) as fake:
        print(f"  fake Spotler API:  {fake.url} (account {ACCOUNT})")
        settings = Settings(
            database_url=paths.database_url, broker_url=paths.broker_url, api_url=fake.url,
            account=ACCOUNT, api_key=api_key, sweep_interval=SWEEP_SECONDS,
        )
        engine = make_engine(paths.database_url)
        try:
            with running_worker(settings, paths) as process:
                ready = wait_until_ready(process, paths.log)
                print(f"  Celery worker:     pid {process.pid}, solo pool, up in "
                      f"{ready:.1f} s, log in {paths.log}")
                records = sample_orders(orders)
                started = time.monotonic()
                bar = ProgressBar(len(records), "enqueueing")
                try:
                    report = enqueue_records(engine, records, settings, bar.update)
                finally:
                    bar.close()
                print(f"Enqueued {report.enqueued} orders with enqueue_purchase.")
                print_refused(report)
                first, problem = wait_until_settled(engine, process, report.enqueued, timeout)
                elapsed = time.monotonic() - started
                if problem is None and first[Status.FAILED] == 1:
                    counts, problem = operator_loop(settings, fake, engine, process,
                                                    report.enqueued, timeout)
                else:
                    counts, problem = first, problem or "no order was parked by Spotler"
            received = fake.state.received()
            once, verdict = exactly_once(
                fake, {r.event["orderid"] for r in records if r.event and not r.problems})
        finally:
            engine.dispose()
    delivered, failed = counts[Status.DELIVERED], counts[Status.FAILED]
    print("Summary")
    print(f"  delivered          {delivered} of {report.enqueued} (one after its retry)")
    print(f"  failed             {failed}")
    print(f"  first pass         {elapsed:.1f} s ({first[Status.DELIVERED] / elapsed:.0f} "
          "events/s, enqueue to last delivery)")
    print(f"  fake API received  {received['total_events']} events in "
          f"{received['requests']} track request(s)")
    print(f"  exactly once       {verdict}")
    if problem:
        print(f"The demo did not finish: {problem}. Last lines of {paths.log}:")
        print(log_tail(paths.log))
    print_next_steps(paths.database_url)
    ok = problem is None and once and delivered == report.enqueued
    return 0 if ok else 1
