"""Hypothesis strategies for Purchase events, valid and malformed."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

safe_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=40
).filter(lambda s: s.strip() == s and s.strip() != "")

emails = st.builds(
    lambda user, domain, tld: f"{user}@{domain}.{tld}",
    st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,20}", fullmatch=True),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["com", "nl", "de", "shop"]),
)
orderids = st.one_of(safe_text.map(lambda s: s[:128]), st.integers(min_value=0, max_value=10**12))
products = st.fixed_dictionaries(
    {"id": st.one_of(safe_text, st.integers(min_value=1, max_value=10**9)),
     "quantity": st.integers(min_value=1, max_value=1000)},
    optional={"price": st.floats(min_value=0, max_value=1e6, allow_nan=False),
              "name": safe_text, "language": st.sampled_from(["nl-NL", "de-DE", "en-GB"])},
)


def valid_purchases() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"event": st.just("Purchase"), "email": emails, "orderid": orderids,
         "products": st.lists(products, min_size=1, max_size=5)},
        optional={
            "currency": st.sampled_from(["EUR", "USD", "GBP"]),
            "totalvalue": st.floats(min_value=0, max_value=1e7, allow_nan=False),
            "timestamp": st.one_of(
                st.integers(min_value=1_000_000_000, max_value=4_000_000_000),
                st.sampled_from(["2026-11-27T10:00:00+01:00", "2026-11-27 09:00:00Z"])),
            "firstname": safe_text, "city": safe_text,
            "newsletter": st.sampled_from(["yes", "no"]),
            "custom_channel": safe_text,
        },
    )


# Each entry: (field path the message must name, a way to break a valid event).
def _set(path: list[Any], value: Any) -> Any:
    def apply(event: dict[str, Any]) -> dict[str, Any]:
        target: Any = event
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return event
    return apply


def _drop(key: str) -> Any:
    def apply(event: dict[str, Any]) -> dict[str, Any]:
        event.pop(key, None)
        return event
    return apply


junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.lists(st.integers()),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def breakages() -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        st.tuples(st.just("email"), st.one_of(junk, st.text(max_size=30).filter(
            lambda s: "@" not in s)).map(lambda v: _set(["email"], v))),
        st.just(("email", _drop("email"))),
        st.just(("orderid", _drop("orderid"))),
        st.tuples(st.just("orderid"), st.one_of(
            st.just(""), st.just("   "), st.text(min_size=129, max_size=200).filter(
                lambda s: s.strip() == s), st.none(), st.booleans(), st.floats())
            .map(lambda v: _set(["orderid"], v))),
        st.just(("products", _drop("products"))),
        st.tuples(st.just("products"), st.one_of(st.just([]), st.none(), st.text(), st.integers())
                  .map(lambda v: _set(["products"], v))),
        st.tuples(st.just("products[0].quantity"), st.one_of(
            st.integers(max_value=0), st.floats(), st.booleans(), st.text(max_size=3), st.none())
            .map(lambda v: _set(["products", 0, "quantity"], v))),
        st.tuples(st.just("products[0].id"), st.one_of(st.just(""), st.none(), st.floats(),
                                                       st.booleans())
                  .map(lambda v: _set(["products", 0, "id"], v))),
        st.tuples(st.just("products[0].price"), st.one_of(
            st.floats(max_value=-0.01), st.text(max_size=3), st.booleans(),
            st.just(float("nan")), st.just(float("inf")))
            .map(lambda v: _set(["products", 0, "price"], v))),
        st.tuples(st.just("currency"), st.one_of(st.just("EURO"), st.just("XXY"), st.integers())
                  .map(lambda v: _set(["currency"], v))),
        st.tuples(st.just("timestamp"), st.one_of(
            st.just("2026-11-27T10:00:00"), st.just("27-11-2026"), st.just(1732700000000),
            st.floats(), st.booleans()).map(lambda v: _set(["timestamp"], v))),
        st.tuples(st.just("orderId"), st.just(_set(["orderId"], "x"))),
        st.tuples(st.just("userId"), st.just(_set(["userId"], "x"))),
        st.tuples(st.just("products[0].language"), st.one_of(
            st.just("dutch"), st.just("nl"), st.integers()).map(
                lambda v: _set(["products", 0, "language"], v))),
        st.tuples(st.just("firstname"), st.one_of(st.just("a\x00b"), st.just("\ud800"),
                                                  st.integers(), st.text(min_size=1025,
                                                                         max_size=1100))
                  .map(lambda v: _set(["firstname"], v))),
    )
