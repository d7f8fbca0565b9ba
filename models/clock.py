"""The one clock: every "now" in the product comes from here, as an aware UTC datetime."""

from __future__ import annotations

import datetime as dt
from typing import Any


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: Any) -> dt.datetime | None:
    """A datetime read from any dialect (naive UTC, aware, or ISO text on SQLite) as aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"not a datetime: {type(value).__name__}")
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
