"""How a value of an event reads: named in a problem, checked as text or as a number.

Shared by the rules of validation.py; pure functions, no I/O.
"""

from __future__ import annotations

import datetime as dt
import decimal
import difflib
import json
import math
from collections.abc import Mapping
from typing import Any

MAX_TEXT_LENGTH = 1024


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {preview(value)}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, decimal.Decimal):
        return f"number {value}"
    if isinstance(value, dt.datetime):
        return "a datetime"
    if isinstance(value, dt.date):
        return "a date"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def preview(text: str, limit: int = 40) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return json.dumps(shown, ensure_ascii=True)


def unknown_field(key: str, known: frozenset[str]) -> str:
    guess = difflib.get_close_matches(key.lower(), sorted(known), n=1, cutoff=0.75)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"{preview(key)[1:-1]}: unknown field{hint}; custom fields are named custom_<name>"


def text_problem(value: Any, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """Why a string cannot be stored and sent as it is, or None."""
    if not isinstance(value, str):
        return f"must be a string, got {kind(value)}"
    if not value.strip():
        return "must not be empty"
    if len(value) > limit:
        return f"must be at most {limit} characters, got {len(value)}"
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it holds a lone surrogate)"
    return None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int in Python


def is_number(value: Any) -> bool:
    if isinstance(value, decimal.Decimal):  # Django's DecimalField, SQLAlchemy's Numeric
        return value.is_finite()
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)
