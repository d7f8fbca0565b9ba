"""Parsing and formatting for the CLI: durations, ages, tables, confirmation prompts."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from collections.abc import Sequence

from spotler_outbox.models.errors import ConfigurationError, UsageError
from spotler_outbox.worker.logs import mask_emails

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> dt.timedelta:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 10m, 2h, 1d or 2w, "
                                         f"got {text!r}")
    return dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def parse_cutoff(text: str, now: dt.datetime) -> dt.datetime:
    """A duration ago, or an ISO date/datetime (UTC when it names no zone)."""
    try:
        return now - parse_duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise ConfigurationError(f"--delivered-before: expected a duration such as 30d or an "
                                 f"ISO date such as 2026-01-31, got {text!r}") from e
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def human_age(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def stamp(when: dt.datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else "-"


def ago(when: dt.datetime | None, now: dt.datetime) -> str:
    if when is None:
        return "never"
    delta = (now - when).total_seconds()
    return f"{stamp(when)} ({human_age(delta)} ago)" if delta >= 0 else \
        f"{stamp(when)} (in {human_age(-delta)})"


def short(text: str | None, limit: int) -> str:
    if not text:
        return "-"
    flat = mask_emails(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin or not sys.stdin.isatty():
        raise UsageError(f"{question.rstrip('?')}: not without confirmation, and stdin is not a "
                       "terminal to ask on; pass --yes")
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")
