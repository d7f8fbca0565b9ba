"""Read Purchase events from JSON Lines or CSV and enqueue them, refusing bad lines one by one.

Re-importing a file is harmless: `enqueue_purchase` returns the existing row for a known orderid,
so the second run only counts duplicates.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox.models.enqueue import enqueue_purchase, outbox_values
from spotler_outbox.models.errors import ConfigurationError, InvalidEvent
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.tables import events
from spotler_outbox.worker.logs import mask_emails

CSV_HELP = """\
CSV files (.csv) need a header row. Order-level columns are the Purchase field names (email,
orderid, currency, timestamp, totalvalue, firstname, ..., custom_<name>); an empty cell leaves
the field out. An `account` column names each order's Spotler account (store); empty or absent:
the default account. Products come either as a JSON array in a `products` column, or one row
per product with the columns product_id, quantity, price and optionally product_name, language
and category_ids (separated by "|"); rows with the same orderid form one order, wherever they
are in the file, and their order-level cells must agree; a refused order is reported by its
first line. Any other file is JSON Lines: one JSON event per line, blank lines skipped. Orders
already in the outbox are counted, not added: importing a file twice is harmless."""

PRODUCT_COLUMNS = {"product_id": "id", "quantity": "quantity", "price": "price",
                   "product_name": "name", "language": "language",
                   "category_ids": "category_ids"}
BATCH_SIZE = 100  # rows per transaction: refusals never touch the database, so none aborts one
PREVIEW_CHUNK = 500  # orderids per lookup of a dry run


@dataclass
class Record:
    """One event to enqueue, or the reasons it cannot be read; `line` is where it starts."""

    line: int
    event: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    enqueued: int = 0
    duplicates: int = 0
    refused: list[Record] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.enqueued + self.duplicates + len(self.refused)


def read_records(path: Path) -> list[Record]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if path.suffix.lower() == ".csv":
                return list(_csv_records(handle))
            return list(_jsonl_records(handle))
    except OSError as e:
        raise ConfigurationError(f"cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigurationError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except csv.Error as e:
        raise ConfigurationError(f"{path} is not readable as CSV: {e}") from e


def _jsonl_records(handle: TextIO) -> Iterator[Record]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as e:
            yield Record(number, None, [f"not valid JSON ({e})"])
            continue
        if not isinstance(event, dict):
            yield Record(number, None, [f"must be a JSON object, got {type(event).__name__}"])
            continue
        yield Record(number, event)


def _csv_records(handle: TextIO) -> Iterator[Record]:
    reader = csv.DictReader(handle)
    columns = reader.fieldnames or []
    if "orderid" not in columns:
        raise ConfigurationError("the CSV header has no orderid column")
    per_product = "products" not in columns
    if per_product and "product_id" not in columns:
        raise ConfigurationError("the CSV header needs a products column (JSON) or a "
                                 "product_id column (one row per product)")
    orders: dict[str, Record] = {}  # by account and orderid
    first_line: dict[str, int] = {}
    loose: list[Record] = []
    line = 1
    for row in reader:
        start, line = line + 1, reader.line_num
        if None in row:
            loose.append(Record(start, None, ["more cells than the header has columns"]))
            continue
        cells = {k: v.strip() for k, v in row.items() if v is not None and v.strip()}
        orderid = cells.get("orderid", "")
        if not per_product or not orderid:
            loose.append(_csv_order(start, cells))
            continue
        key = cells.get("account", "") + "\0" + orderid  # orderids repeat across stores
        if key not in orders:
            orders[key] = _csv_order(start, cells)
            first_line[key] = start
        else:
            _merge_row(orders[key], first_line[key], start, cells)
    yield from sorted([*orders.values(), *loose], key=lambda r: r.line)


def _csv_order(line: int, cells: dict[str, str]) -> Record:
    event: dict[str, Any] = {k: _typed(k, v) for k, v in cells.items()
                             if k not in PRODUCT_COLUMNS and k != "products"}
    record = Record(line, event)
    if "products" in cells:
        try:
            event["products"] = json.loads(cells["products"])
        except ValueError as e:
            record.problems.append(f"products: the column is not a JSON array ({e})")
    elif any(k in cells for k in PRODUCT_COLUMNS):
        event["products"] = [_product(cells)]
    return record


def _merge_row(record: Record, first: int, line: int, cells: dict[str, str]) -> None:
    assert record.event is not None
    for key, value in cells.items():
        if key in PRODUCT_COLUMNS:
            continue
        if record.event.get(key) != _typed(key, value):
            record.problems.append(f"{key}: line {line} says {value!r}, unlike line {first} "
                                   "of the same order")
    record.event.setdefault("products", []).append(_product(cells))


def _product(cells: dict[str, str]) -> dict[str, Any]:
    product: dict[str, Any] = {}
    for column, name in PRODUCT_COLUMNS.items():
        if column in cells:
            product[name] = _typed(name, cells[column])
    return product


def _typed(name: str, value: str) -> Any:
    """CSV cells are text; numbers where Spotler wants numbers, anything unparsable left for
    the validator to name."""
    if name == "category_ids":
        return [part.strip() for part in value.split("|") if part.strip()]
    try:
        if name == "quantity" or (name == "timestamp" and value.isdigit()):
            return int(value)
        if name in ("price", "totalvalue"):
            return float(value)
    except ValueError:
        return value
    return value


class ProgressBar:
    """A one-line text bar on stderr, drawn only on a terminal and at most ten times a second."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 width: int = 30) -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = self.total > 0 and self.stream.isatty()
        self._drawn = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.1 and done < self.total:
            return
        self._drawn = now
        filled = self.width * min(done, self.total) // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def enqueue_records(
    engine: Engine, records: Sequence[Record], settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Validate and enqueue each record, BATCH_SIZE to a transaction."""
    report = ImportReport()
    for start in range(0, len(records), BATCH_SIZE):
        with Session(engine) as session, session.begin():
            for record in records[start:start + BATCH_SIZE]:
                _enqueue_one(session, record, settings, report)
                if progress is not None:
                    progress(report.total)
    return report


def _event_and_account(line: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """A line's `account` says where the order goes; it is no field of the event."""
    event = dict(line)
    return event, event.pop("account", None) or None


def _enqueue_one(session: Session, record: Record, settings: Settings,
                 report: ImportReport) -> None:
    if record.event is None or record.problems:
        report.refused.append(record)
        return
    event, account = _event_and_account(record.event)
    try:
        result = enqueue_purchase(session, event, account=account, settings=settings)
    except InvalidEvent as e:
        record.problems.extend(e.problems)
        report.refused.append(record)
        return
    if result.created:
        report.enqueued += 1
    else:
        report.duplicates += 1


def import_file(
    engine: Engine, path: Path, settings: Settings, stream: TextIO | None = None
) -> ImportReport:
    records = read_records(path)
    bar = ProgressBar(len(records), f"importing {path.name}", stream)
    try:
        return enqueue_records(engine, records, settings, bar.update)
    finally:
        bar.close()


def preview_records(engine: Engine, records: Sequence[Record], settings: Settings) -> ImportReport:
    """What `enqueue_records` would do, writing nothing: each record validated as enqueue
    would, and each valid one counted as new or already present (in the outbox, or earlier in
    the file), read from the outbox in one query per PREVIEW_CHUNK orders."""
    report = ImportReport()
    valid: list[tuple[str, str, str]] = []  # (account, event, orderid): the outbox's key
    for record in records:
        if record.event is None or record.problems:
            report.refused.append(record)
            continue
        event, account = _event_and_account(record.event)
        try:
            values = outbox_values(event, settings, account)
        except InvalidEvent as e:
            record.problems.extend(e.problems)
            report.refused.append(record)
            continue
        valid.append((values["account"], values["event"], values["orderid"]))
    present: set[tuple[str, str, str]] = set()
    with engine.connect() as conn:
        for start in range(0, len(valid), PREVIEW_CHUNK):
            chunk = valid[start:start + PREVIEW_CHUNK]
            present.update((r.account, r.event, r.orderid) for r in conn.execute(
                sa.select(events.c.account, events.c.event, events.c.orderid).where(
                    events.c.orderid.in_({orderid for _, _, orderid in chunk}))))
        conn.rollback()
    for key in valid:
        if key in present:
            report.duplicates += 1
        else:
            report.enqueued += 1
            present.add(key)
    return report


def preview_file(engine: Engine, path: Path, settings: Settings) -> ImportReport:
    return preview_records(engine, read_records(path), settings)


# Also what mask_emails lets through: a refused address is often not a valid one.
_AT_TOKEN = re.compile(r"([^\s\"'@])[^\s\"'@]*@[^\s\"']*")


def refused_lines(report: ImportReport) -> Iterable[str]:
    """One line per refused record, with every e-mail-like token masked."""
    for record in report.refused:
        text = mask_emails("; ".join(record.problems))
        yield f"line {record.line}: " + _AT_TOKEN.sub(lambda m: f"{m.group(1)}***@***", text)
