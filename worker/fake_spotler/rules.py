"""What the fake Spotler API itself refuses in an event: Spotler's documented rules, written
again from /work/shared/spotler-api.md and deliberately NOT the project's validator.

The tests judge the outbox's validation against this fake; had the fake used the same
function, a bug in it would be agreed with on both sides. So these rules are short, written
from the API's documentation, and only as strict as Spotler is said to be: a naive datetime is
read as CET here (the outbox refuses it on purpose), unknown fields are ignored.
"""

from __future__ import annotations

import re
from typing import Any

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_LANGUAGE = re.compile(r"[A-Za-z]{2}-[A-Za-z]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_DATE_START = re.compile(r"\d{4}-\d{2}-\d{2}")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return (_whole(value) or isinstance(value, float)) and value == value  # NaN != NaN


def _filled(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def problems_of(event: Any) -> list[str]:
    """Each thing Spotler would refuse in one event, as "field: why"; empty when it is taken."""
    if not isinstance(event, dict):
        return ["event: not an object"]
    found: list[str] = []
    if event.get("event") != "Purchase":
        found.append("event: must be Purchase")
    email = event.get("email")
    if not (isinstance(email, str) and (_HEX_SHA256.fullmatch(email)
                                        or _ADDRESS.fullmatch(email))):
        found.append("email: not an address or a lower-case hex SHA-256")
    orderid = event.get("orderid")
    if not (_filled(orderid) or _whole(orderid)):
        found.append("orderid: missing or empty")
    found += _product_problems(event.get("products"))
    if "currency" in event and not (isinstance(event["currency"], str)
                                    and _CURRENCY.fullmatch(event["currency"])):
        found.append("currency: not an ISO 4217 code")
    if "timestamp" in event and not _timestamp_ok(event["timestamp"]):
        found.append("timestamp: TIMESTAMP_ERROR")
    if "totalvalue" in event and not _number(event["totalvalue"]):
        found.append("totalvalue: not a number")
    return found


def _product_problems(products: Any) -> list[str]:
    if not isinstance(products, list) or not products:
        return ["products: must be a non-empty array"]
    found = []
    for i, product in enumerate(products):
        if not isinstance(product, dict):
            found.append(f"products[{i}]: not an object")
            continue
        if not (_filled(product.get("id")) or _whole(product.get("id"))):
            found.append(f"products[{i}].id: missing (the SKU)")
        quantity = product.get("quantity")
        if not (isinstance(quantity, int) and _whole(quantity) and quantity > 0):
            found.append(f"products[{i}].quantity: not a positive whole number")
        if "language" in product and not (isinstance(product["language"], str)
                                          and _LANGUAGE.fullmatch(product["language"])):
            found.append(f"products[{i}].language: not like nl-NL")
        if "price" in product and not _number(product["price"]):
            found.append(f"products[{i}].price: not a number")
    return found


def _timestamp_ok(value: Any) -> bool:
    # Seconds, or a text starting with YYYY-mm-dd (with no zone Spotler reads it as CET).
    return _whole(value) or (isinstance(value, str) and _DATE_START.match(value) is not None)
