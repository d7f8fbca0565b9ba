"""Validation of a Purchase event in Spotler's JSON shape: pure functions, no I/O.

Everything Spotler would reject later is refused here, so the order system hears of it while
the customer is still on the page. Every problem is reported at once, each with its field path.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from spotler_outbox.models.currencies import ISO_4217
from spotler_outbox.models.errors import InvalidEvent
from spotler_outbox.models.settings import ProducerSettings
from spotler_outbox.models.values import (
    is_int,
    is_number,
    kind,
    text_problem,
    unknown_field,
)

MAX_ORDERID_LENGTH = 128
MAX_PRODUCTS = 1000
MAX_PAYLOAD_BYTES = 100_000
MAX_QUANTITY = 1_000_000

TEXT_FIELDS = ("firstname", "lastname", "phone", "postcode", "city")
CONSENT_FIELDS = ("newsletter", "service", "marketing")
KNOWN_FIELDS = frozenset(
    {"event", "email", "orderid", "products", "currency", "userid", "gender", "birthdate",
     "country", "totalvalue", "timestamp", *TEXT_FIELDS, *CONSENT_FIELDS}
)
PRODUCT_FIELDS = frozenset({"id", "quantity", "language", "name", "price", "category_ids"})

_EMAIL = re.compile(r"^[^@\s\"(),:;<>\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_LANGUAGE = re.compile(r"^([A-Za-z]{2})[-_]([A-Za-z]{2})$")
_CUSTOM = re.compile(r"^custom_[A-Za-z0-9_]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Spotler reads a datetime without an offset as CET: only explicit offsets (or Z) pass.
_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})$"
)
_NAIVE_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?$")
_ADD_TIMEZONE = ("a datetime without a timezone, which Spotler would read as CET; add the "
                 "timezone")
# Epoch seconds from 2000 to 2100: anything else is milliseconds or a mistake.
_EPOCH_MIN, _EPOCH_MAX = 946_684_800, 4_102_444_800


_PLAIN = ProducerSettings()


def validate_purchase(event: Any, settings: ProducerSettings = _PLAIN) -> dict[str, Any]:
    """Return the event exactly as it will be sent, or raise InvalidEvent naming every problem.

    `settings` says what the shop's Spotler account needs: SPOTLER_MULTI_CURRENCY,
    SPOTLER_MULTI_LANGUAGE and SPOTLER_HASH_EMAIL (the default: none of them).
    A shop's own values are taken as its ORM returns them: a Decimal amount (sent with its
    exact digits), an aware datetime for `timestamp`, a date for `birthdate`, an int id.
    """
    return validated_json(event, settings)[0]


def validated_json(event: Any, settings: ProducerSettings = _PLAIN) -> tuple[dict[str, Any], str]:
    """validate_purchase's event and its canonical JSON, serialised once for the size check
    and the row alike."""
    multi_currency, multi_language = settings.multi_currency, settings.multi_language
    problems: list[str] = []
    if not isinstance(event, Mapping):
        raise InvalidEvent([f"event: must be a JSON object, got {kind(event)}"])
    out: dict[str, Any] = {}
    for key, value in event.items():
        if not isinstance(key, str):
            problems.append(f"{key!r}: field names must be strings")
            continue
        checker = _FIELD_CHECKS.get(key)
        if checker is not None:
            checker(key, value, out, problems)
        elif _CUSTOM.match(key):
            _check_custom(key, value, out, problems)
        else:
            problems.append(unknown_field(key, KNOWN_FIELDS))
    out.setdefault("event", "Purchase")
    for required in ("email", "orderid", "products"):
        if required not in event:
            problems.append(f"{required}: is required")
    if multi_currency and "currency" not in event:
        problems.append("currency: is required when SPOTLER_MULTI_CURRENCY is on")
    if multi_language and isinstance(out.get("products"), list):
        for i, product in enumerate(out["products"]):
            if isinstance(product, dict) and "language" not in product:
                problems.append(
                    f"products[{i}].language: is required when SPOTLER_MULTI_LANGUAGE is on"
                )
    payload, text = out, ""
    if not problems:
        if settings.hash_email and not _SHA256.match(out["email"]):
            out["email"] = hash_email_address(out["email"])
        # Keep "event" first: the order a human reading the table expects.
        payload = {"event": out.pop("event"), **out}
        text = canonical_json(payload)
        size = len(text.encode("utf-8"))
        if size > MAX_PAYLOAD_BYTES:
            problems.append(f"event: is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
    if problems:
        raise InvalidEvent(problems)
    return payload, text


# A Decimal goes into the JSON as its own digits, never through a float (19.99 stays 19.99,
# 10.00 keeps its cents). json has no hook for raw number text, so each Decimal is first
# written as a string marker and the marker then replaced: a marker is a string that starts
# with NUL, which validation refuses in every string a payload can hold.
_EXACT_MARKER = re.compile(r'"\\u0000(\d+)"')


def canonical_json(payload: Mapping[str, Any]) -> str:
    exact: list[str] = []

    def as_marker(value: Any) -> str:
        if isinstance(value, decimal.Decimal) and value.is_finite():
            exact.append(format(value, "f"))
            return f"\x00{len(exact) - 1}"
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                      default=as_marker)
    if exact:
        text = _EXACT_MARKER.sub(lambda m: exact[int(m.group(1))], text)
    return text


def hash_email_address(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode("utf-8")).hexdigest()


def _check_event(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if value != "Purchase":
        problems.append(f"event: must be \"Purchase\", got {kind(value)}")
    else:
        out[key] = value


def _check_email(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    problem = text_problem(value, 254)
    if problem is None:
        address = value.strip()
        if _SHA256.match(address):
            out[key] = address.lower()
            return
        if _EMAIL.match(address):
            out[key] = address
            return
        # The value itself is not echoed: messages end up in logs and last_error.
        problem = ("must be an e-mail address or its SHA-256 in hex, got a string of "
                   f"{len(address)} characters that is neither")
    problems.append(f"{key}: {problem}")


def _check_orderid(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    # An int is taken, as Django's and SQLAlchemy's primary keys are: it travels as its digits,
    # so 1001 and "1001" are one order. Nothing else becomes a string here.
    if is_int(value):
        value = str(value)
    elif not isinstance(value, str):
        problems.append(f"{key}: must be a string or an int, got {kind(value)}")
        return
    problem = text_problem(value, MAX_ORDERID_LENGTH)
    if problem is None and value != value.strip():
        problem = "must not start or end with white space"
    if problem is None:
        out[key] = value
    else:
        problems.append(f"{key}: {problem}")


def _check_userid(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if is_int(value):
        value = str(value)
    _check_text(key, value, out, problems)


def _check_text(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    problem = text_problem(value)
    if problem is None:
        out[key] = value
    else:
        problems.append(f"{key}: {problem}")


def _check_amount(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if not is_number(value) or value < 0:
        problems.append(f"{key}: must be a non-negative number, got {kind(value)}")
    else:
        out[key] = value


def _check_currency(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if isinstance(value, str) and value.upper() in ISO_4217:
        out[key] = value.upper()
    else:
        problems.append(f"{key}: must be an ISO 4217 code such as \"EUR\", got {kind(value)}")


def _check_country(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z]{2}", value):
        out[key] = value.upper()
    else:
        problems.append(f"{key}: must be an ISO 3166-1 alpha-2 code such as \"NL\", "
                        f"got {kind(value)}")


def _check_gender(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if value in ("M", "F", "U"):
        out[key] = value
    else:
        problems.append(f"{key}: must be \"M\", \"F\" or \"U\", got {kind(value)}")


def _check_consent(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if value in ("yes", "no"):
        out[key] = value
    else:
        problems.append(f"{key}: must be \"yes\" or \"no\" (leave it out when unknown), "
                        f"got {kind(value)}")


def _check_birthdate(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        out[key] = value.isoformat()
        return
    if isinstance(value, str) and _DATE.match(value):
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            pass
        else:
            out[key] = value
            return
    problems.append(f"{key}: must be a date (YYYY-MM-DD or a datetime.date), got {kind(value)}")


def _check_timestamp(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if isinstance(value, dt.datetime):
        if value.utcoffset() is None:
            problems.append(f"{key}: {_ADD_TIMEZONE} (e.g. datetime.now(timezone.utc), or "
                            "Django's timezone.now())")
        else:
            # ISO 8601 with its offset, to the second: Spotler's ATOM form.
            out[key] = value.isoformat(timespec="seconds")
        return
    if is_int(value):
        if _EPOCH_MIN <= value <= _EPOCH_MAX:
            out[key] = value
            return
        problems.append(f"{key}: epoch seconds must lie between 2000 and 2100, got {value} "
                        "(milliseconds?)")
        return
    if isinstance(value, str) and _DATETIME.match(value):
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            out[key] = value
            return
    if isinstance(value, str) and _NAIVE_DATETIME.match(value):
        problems.append(f"{key}: {_ADD_TIMEZONE} (e.g. 2026-11-27T10:00:00+01:00), got "
                        f"{kind(value)}")
        return
    problems.append(f"{key}: must be epoch seconds, an ISO 8601 datetime with its timezone "
                    f"(e.g. 2026-11-27T10:00:00+01:00) or an aware datetime, got {kind(value)}")


def _check_custom(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    scalars_ok = value is None or isinstance(value, bool) or is_number(value)
    if scalars_ok:
        out[key] = value
        return
    if isinstance(value, str):
        problem = text_problem(value) if value else None
        if problem is None:
            out[key] = value
        else:
            problems.append(f"{key}: {problem}")
        return
    problems.append(f"{key}: must be a string, number, boolean or null, got {kind(value)}")


def _check_products(key: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if not isinstance(value, list | tuple):
        problems.append(f"products: must be a non-empty array, got {kind(value)}")
        return
    if not value:
        problems.append("products: must hold at least one product")
        return
    if len(value) > MAX_PRODUCTS:
        problems.append(f"products: at most {MAX_PRODUCTS} products, got {len(value)}")
        return
    checked = []
    for i, product in enumerate(value):
        checked.append(_check_product(f"products[{i}]", product, problems))
    out[key] = checked


def _check_product(path: str, product: Any, problems: list[str]) -> dict[str, Any]:
    if not isinstance(product, Mapping):
        problems.append(f"{path}: must be an object, got {kind(product)}")
        return {}
    out: dict[str, Any] = {}
    for name, value in product.items():
        field = f"{path}.{name}"
        if name == "id":
            sku = str(value) if is_int(value) else value
            problem = text_problem(sku, 255)
            if problem is None:
                out[name] = sku
            else:
                problems.append(f"{field}: {problem}")
        elif name == "quantity":
            ok = is_int(value)
            if ok and 0 < value <= MAX_QUANTITY:
                out[name] = value
            else:
                problems.append(f"{field}: must be a positive integer, got {kind(value)}")
        elif name == "language":
            match = _LANGUAGE.match(value) if isinstance(value, str) else None
            if match:
                # nl_NL and nl-nl are read as nl-NL: the shop's locale string, normalised.
                out[name] = f"{match.group(1).lower()}-{match.group(2).upper()}"
            else:
                problems.append(f"{field}: must be a language-country code such as \"nl-NL\", "
                                f"got {kind(value)}")
        elif name == "price":
            _check_amount(field, value, out, problems)
            if field in out:
                out[name] = out.pop(field)
        elif name == "name":
            problem = text_problem(value)
            if problem is None:
                out[name] = value
            else:
                problems.append(f"{field}: {problem}")
        elif name == "category_ids":
            _check_category_ids(field, value, out, problems)
        elif isinstance(name, str):
            problems.append(f"{path}.{unknown_field(name, PRODUCT_FIELDS)}")
        else:
            problems.append(f"{path}.{name!r}: field names must be strings")
    for required in ("id", "quantity"):
        if required not in product:
            problems.append(f"{path}.{required}: is required")
    return out


def _check_category_ids(field: str, value: Any, out: dict[str, Any], problems: list[str]) -> None:
    if not isinstance(value, list | tuple):
        problems.append(f"{field}: must be an array of strings, got {kind(value)}")
        return
    ids = []
    for i, item in enumerate(value):
        item = str(item) if is_int(item) else item
        problem = text_problem(item, 255)
        if problem is None:
            ids.append(item)
        else:
            problems.append(f"{field}[{i}]: {problem}")
    out["category_ids"] = ids


_FIELD_CHECKS = {
    "event": _check_event,
    "email": _check_email,
    "orderid": _check_orderid,
    "userid": _check_userid,
    "products": _check_products,
    "currency": _check_currency,
    "country": _check_country,
    "gender": _check_gender,
    "birthdate": _check_birthdate,
    "timestamp": _check_timestamp,
    "totalvalue": _check_amount,
    **dict.fromkeys(TEXT_FIELDS, _check_text),
    **dict.fromkeys(CONSENT_FIELDS, _check_consent),
}
