"""Bad input from every door: refused naming the field, or parked with its reason; never a crash.

Rows here arrive by plain SQL (the door that skips enqueue's validation); the Python API's
door is covered by tests/unit/test_validation.py and the import command's by test_cli.py.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from spotler_outbox.models.database import make_engine
from spotler_outbox.worker.dispatch import Dispatcher
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi, start_fake_api
from spotler_outbox.worker.spotler.client import SpotlerClient
from tests.conftest import purchase
from tests.integration.fixtures import ACCOUNT, API_KEY, delivery_settings, insert_raw
from tests.unit.strategies import breakages, valid_purchases

INJECTIONS = ["'; DROP TABLE outbox_events; --", "<script>alert(1)</script>", "${jndi:ldap://x}",
              "\u202eevil", "Robert'); --", "\\\\x00", "%s%s%n", "🛒" * 50]


@pytest.fixture(scope="module")
def fake_api() -> Iterator[RunningFakeApi]:
    with start_fake_api(account=ACCOUNT, api_key=API_KEY) as api:
        yield api


def payload_texts(orderid: str) -> st.SearchStrategy[tuple[str, str, str | None]]:
    """(kind, payload text, the field its reason must name) for a row whose orderid column is
    `orderid`; the kind alone says how the row must end (see MUST_DELIVER)."""
    def with_orderid(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "orderid": orderid}

    broken = st.tuples(valid_purchases(), breakages()).map(
        lambda pair: ("broken event", json.dumps(pair[1][1](with_orderid(pair[0])),
                                                 allow_nan=True), pair[1][0]))
    return st.one_of(
        valid_purchases().map(lambda e: ("valid", json.dumps(with_orderid(e)), None)),
        broken,
        st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=10),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
        .map(lambda v: ("random json", json.dumps(v), None)),
        st.text(max_size=50).filter(_not_json).map(lambda t: ("not json", t, "payload")),
        st.sampled_from(INJECTIONS).map(
            lambda s: ("injection", json.dumps(purchase(orderid, firstname=s, city=s)), None)),
        st.just(("huge", json.dumps(purchase(orderid, custom_blob="x" * 200_000)), "event")),
    )


MUST_DELIVER = {"valid", "injection"}


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return "\x00" not in text
    return False


def _without(event: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != key}


def corpus() -> list[dict[str, Any]]:
    document = json.loads((Path(__file__).parents[1] / "data" / "bad_input_corpus.json")
                          .read_text(encoding="utf-8"))
    events: list[dict[str, Any]] = document["events"]
    return events


def corpus_row(index: int, entry: dict[str, Any]) -> tuple[str, str]:
    """(orderid column, payload text) for one corpus entry."""
    orderid = f"K-{index}"
    if "text" in entry:
        return orderid, entry["text"]
    payload = json.loads(json.dumps(entry["json"]).replace("@ID", orderid))
    if "pad_custom_blob" in entry:
        payload["custom_blob"] = "x" * entry["pad_custom_blob"]
    return orderid, json.dumps(payload)


def dispatch_all(engine: Engine, database_url: str, api: RunningFakeApi) -> None:
    settings = delivery_settings(database_url, api.url, batch_size=7)
    dispatcher = Dispatcher(engine, SpotlerClient(settings), settings, worker_name="bad-input")
    for _ in range(50):
        if not dispatcher.run(budget_seconds=5).claimed:
            return
    raise AssertionError("dispatch did not settle")


def outcome_of(engine: Engine) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        return {r.orderid: (r.status, r.last_error) for r in conn.execute(sa.text(
            "SELECT orderid, status, last_error FROM outbox_events"))}


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_every_malformed_row_is_parked_with_its_reason_and_every_valid_one_delivered(
    engine: Engine, database_url: str, fake_api: RunningFakeApi, data: st.DataObject,
) -> None:
    from tests.conftest import wipe

    wipe(engine)
    fake_api.state.reset()
    rows = {f"H-{i}": data.draw(payload_texts(f"H-{i}")) for i in range(12)}
    for orderid, (_, text, _) in rows.items():
        insert_raw(engine, orderid, text)
    dispatch_all(engine, database_url, fake_api)
    outcomes = outcome_of(engine)
    for orderid, (kind, text, field) in rows.items():
        status, error = outcomes[orderid]
        if kind in MUST_DELIVER:
            assert status == "delivered", (kind, text[:200], error)
        else:
            assert status == "failed" and error, (kind, text[:200])
            if field is not None:
                assert f"{field}:" in error or f"{field}[" in error or f"{field}." in error, (
                    kind, field, error)
    received = fake_api.state.received()["orderids"]
    assert set(received) == {o for o, (kind, _, _) in rows.items() if kind in MUST_DELIVER}
    assert {r["status"] for r in fake_api.state.request_log()} <= {200}


@pytest.mark.parametrize("index, entry", list(enumerate(corpus())),
                         ids=[entry["name"] for entry in corpus()])
def test_each_hand_labelled_event_ends_as_labelled_naming_its_field(
    engine: Engine, database_url: str, fake_api: RunningFakeApi, index: int,
    entry: dict[str, Any],
) -> None:
    fake_api.state.reset()
    orderid, text = corpus_row(index, entry)
    insert_raw(engine, orderid, text)
    insert_raw(engine, "K-valid", json.dumps(purchase("K-valid")))  # a neighbour still goes
    dispatch_all(engine, database_url, fake_api)
    outcomes = outcome_of(engine)
    status, error = outcomes[orderid]
    assert outcomes["K-valid"][0] == "delivered"
    assert status == entry["verdict"], (entry["name"], error)
    # Caught by the outbox's own check before sending: Spotler never had to refuse it.
    assert {r["status"] for r in fake_api.state.request_log()} == {200}
    if entry["verdict"] == "failed":
        assert error is not None and entry["field"] in error, (entry["name"], error)
        assert orderid not in fake_api.state.received()["orderids"]
    else:
        assert fake_api.state.received()["orderids"][orderid] == 1


def test_a_thousand_bad_rows_are_counted_by_how_they_ended(
    server_database_url: str, fake_api: RunningFakeApi, capsys: pytest.CaptureFixture[str],
) -> None:
    fake_api.state.reset()
    engine = make_engine(server_database_url)
    generator = random.Random(11)
    kinds: dict[str, str] = {}
    # A seeded Random, not Hypothesis: the counts are figures for the README and must repeat.
    makers = [
        ("valid", lambda o: json.dumps(purchase(o))),
        ("not json", lambda o: generator.choice(["{", "[1,", "nul", "'x'", "{\"a\":}"])),
        ("wrong type", lambda o: json.dumps(generator.choice([[], 1, "s", None, True]))),
        ("missing field", lambda o: json.dumps(_without(purchase(o), generator.choice(
            ["email", "products", "orderid"])))),
        ("unknown field", lambda o: json.dumps({**purchase(o), "orderId": o})),
        ("bad quantity", lambda o: json.dumps(purchase(o, products=[
            {"id": "S", "quantity": generator.choice([0, -1, 1.5, "2", True])}]))),
        ("naive date", lambda o: json.dumps(purchase(o, timestamp="2026-11-27 10:00:00"))),
        ("orderid mismatch", lambda o: json.dumps(purchase(o + "-other"))),
        ("huge", lambda o: json.dumps(purchase(o, custom_blob="x" * 150_000))),
        ("injection", lambda o: json.dumps(purchase(o, firstname=generator.choice(INJECTIONS)))),
    ]
    for i in range(1000):
        kind, make = makers[i % len(makers)]
        orderid = f"BAD-{i}"
        kinds[orderid] = kind
        insert_raw(engine, orderid, make(orderid))
    dispatch_all(engine, server_database_url, fake_api)
    outcomes = outcome_of(engine)
    table: Counter[tuple[str, str]] = Counter(
        (kinds[o], status) for o, (status, _) in outcomes.items())
    engine.dispose()
    with capsys.disabled():
        print(f"\nbad input via plain SQL ({server_database_url.split(':')[0]}): kind -> ended")
        for (kind, status), n in sorted(table.items()):
            print(f"  {kind:18} {status:10} {n}")
    for kind in ("valid", "injection"):
        assert table[(kind, "delivered")] == 100
    for kind, _ in makers[1:-1]:
        assert table[(kind, "failed")] == 100, kind
    assert table[("huge", "failed")] == 100
    # The README's table: every parked row carries the reason for its kind.
    reasons = {"not json": "payload: not valid JSON", "wrong type": "event: must be a JSON object",
               "missing field": "is required", "unknown field": "orderId: unknown field",
               "bad quantity": "products[0].quantity:", "naive date": "timestamp:",
               "orderid mismatch": "orderid: the payload says", "huge": "custom_blob:"}
    for orderid, (status, error) in outcomes.items():
        if status == "failed":
            assert reasons[kinds[orderid]] in (error or ""), (kinds[orderid], error)


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_every_malformed_line_of_an_import_is_refused_naming_the_field_and_the_rest_enqueued(
    engine: Engine, database_url: str, data: st.DataObject,
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from spotler_outbox.models.settings import reset_settings
    from spotler_outbox.worker.console.cli import main
    from tests.conftest import wipe

    wipe(engine)
    monkeypatch.setenv("OUTBOX_DATABASE_URL", database_url)
    monkeypatch.setenv("OUTBOX_WAKEUP", "false")
    reset_settings()
    lines: list[str] = []
    broken_fields: dict[int, str] = {}
    for i in range(10):
        event = {**data.draw(valid_purchases()), "orderid": f"IMP-{i}"}
        if data.draw(st.booleans()):
            field, apply = data.draw(breakages())
            event = apply(event)
            broken_fields[i + 1] = field
        lines.append(json.dumps(event, allow_nan=True))
    path = tmp_path_factory.mktemp("import") / "orders.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = main(["import", str(path)])
    out = capsys.readouterr().out
    reset_settings()
    assert code == (1 if broken_fields else 0)
    first = out.splitlines()[0]
    assert first == (f"enqueued {10 - len(broken_fields)}, already present 0, "
                     f"refused {len(broken_fields)}")
    for line_number, field in broken_fields.items():
        assert f"line {line_number}: {field}" in out, (field, out)
