"""Every malformed Purchase is refused naming the field; every valid one passes unchanged."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotler_outbox.models.errors import InvalidEvent
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.validation import MAX_PAYLOAD_BYTES, canonical_json, validate_purchase
from tests.conftest import purchase
from tests.unit.strategies import breakages, valid_purchases


@given(event=valid_purchases())
def test_every_valid_event_passes_and_serialises_to_json(event: dict[str, Any]) -> None:
    result = validate_purchase(event)
    assert result["event"] == "Purchase"
    assert result["orderid"] == str(event["orderid"])
    canonical_json(result)  # never raises for a validated event


@given(event=valid_purchases(), breakage=breakages())
def test_every_malformed_event_is_refused_with_a_message_naming_the_field(
    event: dict[str, Any], breakage: tuple[str, Any]
) -> None:
    field, apply = breakage
    broken = apply(copy.deepcopy(event))
    with pytest.raises(InvalidEvent) as refused:
        validate_purchase(broken)
    assert any(p.startswith(field) for p in refused.value.problems), refused.value.problems


@given(value=st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers())))
def test_anything_but_an_object_is_refused(value: Any) -> None:
    with pytest.raises(InvalidEvent, match="event: must be a JSON object"):
        validate_purchase(value)


def test_all_problems_are_reported_at_once_with_their_paths() -> None:
    bad = {"email": "nope", "orderid": "", "products": [
        {"id": "A", "quantity": 1}, {"id": "B", "quantity": 1},
        {"id": "C", "quantity": 0}]}
    with pytest.raises(InvalidEvent) as refused:
        validate_purchase(bad)
    problems = refused.value.problems
    assert "products[2].quantity: must be a positive integer, got number 0" in problems
    assert any(p.startswith("email: must be an e-mail address") for p in problems)
    assert "orderid: must not be empty" in problems


@pytest.mark.parametrize("quantity", [1.5, True, "2", None, -1])
def test_a_quantity_must_be_a_positive_integer_and_nothing_that_looks_like_one(
    quantity: Any,
) -> None:
    with pytest.raises(InvalidEvent, match=r"products\[0\]\.quantity"):
        validate_purchase(purchase(products=[{"id": "S", "quantity": quantity}]))


def test_a_typo_in_a_field_name_is_caught_with_a_suggestion() -> None:
    with pytest.raises(InvalidEvent, match="userId: unknown field \\(did you mean 'userid'\\?\\)"):
        validate_purchase(purchase(userId="42"))


def test_custom_fields_are_allowed() -> None:
    assert validate_purchase(purchase(custom_channel="app"))["custom_channel"] == "app"


def test_numeric_orderids_are_stored_as_text() -> None:
    assert validate_purchase(purchase(orderid=1234))["orderid"] == "1234"


def test_a_language_with_an_underscore_or_lower_case_country_is_normalised() -> None:
    event = purchase(products=[{"id": "S", "quantity": 1, "language": "nl_nl"}])
    assert validate_purchase(event)["products"][0]["language"] == "nl-NL"


def test_multi_currency_and_multi_language_make_their_fields_required() -> None:
    event = purchase()
    del event["currency"]
    with pytest.raises(InvalidEvent) as refused:
        validate_purchase(event, Settings(multi_currency=True, multi_language=True))
    assert refused.value.problems == [
        "currency: is required when SPOTLER_MULTI_CURRENCY is on",
        "products[0].language: is required when SPOTLER_MULTI_LANGUAGE is on",
    ]


@pytest.mark.parametrize("stamp, message", [
    ("2026-11-27T10:00:00", "timestamp: a datetime without a timezone, which Spotler would "
                            "read as CET; add the timezone"),
    ("2026-11-27 10:00", "timestamp: a datetime without a timezone"),
    ("1732700000000", "timestamp: must be epoch seconds, an ISO 8601 datetime"),
])
def test_a_date_without_timezone_is_refused_because_spotler_would_read_it_as_cet(
    stamp: str, message: str,
) -> None:
    with pytest.raises(InvalidEvent, match=message):
        validate_purchase(purchase(timestamp=stamp))


@pytest.mark.parametrize("stamp", ["2026-11-27T10:00:00+01:00", "2026-11-27T09:00:00Z",
                                   1764234000])
def test_a_date_with_a_timezone_or_epoch_seconds_is_accepted(stamp: Any) -> None:
    assert validate_purchase(purchase(timestamp=stamp))["timestamp"] == stamp


def test_a_sha256_of_the_email_is_accepted_in_place_of_the_address() -> None:
    digest = "A" * 64
    assert validate_purchase(purchase(email=digest))["email"] == "a" * 64


def test_email_hashing_stores_the_sha256_of_the_trimmed_lower_cased_address() -> None:
    import hashlib

    result = validate_purchase(purchase(email=" Jane@Example.COM "), Settings(hash_email=True))
    assert result["email"] == hashlib.sha256(b"jane@example.com").hexdigest()


def test_a_huge_payload_is_refused_with_its_size() -> None:
    event = purchase(products=[{"id": "S" * 200, "quantity": 1, "name": "n" * 1000}] * 100)
    with pytest.raises(InvalidEvent, match=f"over the {MAX_PAYLOAD_BYTES}-byte limit"):
        validate_purchase(event)


def test_an_event_name_other_than_purchase_is_refused() -> None:
    with pytest.raises(InvalidEvent, match='event: must be "Purchase"'):
        validate_purchase(purchase(event="PageView"))
