"""A shop's own Python values, as its ORM returns them, each labelled by hand with the JSON it
must be stored as, or the one problem it must be refused with."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from spotler_outbox.models.errors import InvalidEvent
from spotler_outbox.models.validation import validated_json
from tests.conftest import purchase

CET = dt.timezone(dt.timedelta(hours=1))
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def with_price(price: Any) -> dict[str, Any]:
    return purchase("V-1", products=[{"id": "SKU-1", "quantity": 1, "price": price}])


# (what, event, a fragment of the stored JSON, written out by hand)
ACCEPTED = [
    ("Decimal price", with_price(Decimal("9.95")), '"price":9.95}'),
    ("Decimal price keeps its cents", with_price(Decimal("10.00")), '"price":10.00}'),
    ("Decimal price a float would round", with_price(Decimal("12345678901234567.89")),
     '"price":12345678901234567.89}'),
    ("Decimal price of one cent", with_price(Decimal("0.01")), '"price":0.01}'),
    ("Decimal in exponent form, written out", with_price(Decimal("1E+2")), '"price":100}'),
    ("float price, as before", with_price(9.95), '"price":9.95}'),
    ("Decimal totalvalue", purchase("V-1", totalvalue=Decimal("19.90")), '"totalvalue":19.90'),
    ("Decimal custom field", purchase("V-1", custom_margin=Decimal("3.50")),
     '"custom_margin":3.50'),
    ("aware datetime, fixed offset", purchase("V-1", timestamp=dt.datetime(
        2026, 11, 27, 10, 0, tzinfo=CET)), '"timestamp":"2026-11-27T10:00:00+01:00"'),
    ("aware datetime in UTC", purchase("V-1", timestamp=dt.datetime(
        2026, 11, 27, 9, 0, tzinfo=dt.UTC)), '"timestamp":"2026-11-27T09:00:00+00:00"'),
    ("aware datetime in a summer zone, to the second", purchase("V-1", timestamp=dt.datetime(
        2026, 7, 1, 12, 30, 15, 999_999, tzinfo=AMSTERDAM)),
     '"timestamp":"2026-07-01T12:30:15+02:00"'),
    ("date of birth", purchase("V-1", birthdate=dt.date(1990, 5, 17)),
     '"birthdate":"1990-05-17"'),
    ("int orderid, sent as its digits", purchase(1001), '"orderid":"1001"'),
    ("int userid", purchase("V-1", userid=42), '"userid":"42"'),
]

# (what, event, the problem, written out by hand)
REFUSED = [
    ("negative Decimal", with_price(Decimal("-0.01")),
     "products[0].price: must be a non-negative number, got number -0.01"),
    ("Decimal NaN", with_price(Decimal("NaN")),
     "products[0].price: must be a non-negative number, got number NaN"),
    ("Decimal infinity", purchase("V-1", totalvalue=Decimal("Infinity")),
     "totalvalue: must be a non-negative number, got number Infinity"),
    ("Decimal quantity", purchase("V-1", products=[{"id": "S", "quantity": Decimal("2")}]),
     "products[0].quantity: must be a positive integer, got number 2"),
    ("naive datetime", purchase("V-1", timestamp=dt.datetime(2026, 11, 27, 10, 0)),
     "timestamp: a datetime without a timezone, which Spotler would read as CET; add the "
     "timezone (e.g. datetime.now(timezone.utc), or Django's timezone.now())"),
    ("date as timestamp", purchase("V-1", timestamp=dt.date(2026, 11, 27)),
     "timestamp: must be epoch seconds, an ISO 8601 datetime with its timezone "
     "(e.g. 2026-11-27T10:00:00+01:00) or an aware datetime, got a date"),
    ("datetime as birthdate", purchase("V-1", birthdate=dt.datetime(1990, 5, 17, tzinfo=CET)),
     "birthdate: must be a date (YYYY-MM-DD or a datetime.date), got a datetime"),
    ("bool orderid", purchase(True), "orderid: must be a string or an int, got boolean true"),
    ("float orderid", purchase(1001.0), "orderid: must be a string or an int, got number 1001.0"),
    ("Decimal orderid", purchase(Decimal("1001")),
     "orderid: must be a string or an int, got number 1001"),
]


@pytest.mark.parametrize("event, stored", [(e, s) for _, e, s in ACCEPTED],
                         ids=[what for what, _, _ in ACCEPTED])
def test_a_shops_own_value_is_stored_as_the_json_labelled_for_it(
    event: dict[str, Any], stored: str,
) -> None:
    assert stored in validated_json(event)[1]


@pytest.mark.parametrize("event, problem", [(e, p) for _, e, p in REFUSED],
                         ids=[what for what, _, _ in REFUSED])
def test_a_value_that_cannot_be_sent_as_meant_is_refused_naming_its_field(
    event: dict[str, Any], problem: str,
) -> None:
    with pytest.raises(InvalidEvent) as refused:
        validated_json(event)
    assert refused.value.problems == [problem]
