"""`spotler-outbox import --dry-run`: a hand-labelled file, and nothing written anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from spotler_outbox.worker.console.cli import main
from tests.conftest import purchase
from tests.integration.fixtures import seed_row

# Each line with the verdict and the field a person decided on, reading the README's rules.
LABELLED: list[tuple[str, str, str | None]] = [
    (json.dumps(purchase("N-1")), "new", None),
    (json.dumps(purchase("OLD-1")), "present", None),  # already in the outbox
    (json.dumps(purchase("N-2", products=[{"id": "SKU-1", "quantity": 0}])), "refused",
     "products[0].quantity"),
    ("{not json", "refused", "not valid JSON"),
    ("", "blank", None),
    (json.dumps(purchase("N-3", currency="EUR", timestamp="2026-11-27T10:00:00+01:00")),
     "new", None),
    (json.dumps(purchase("N-1")), "present", None),  # the same order twice in the file
    (json.dumps({**{k: v for k, v in purchase("N-4").items() if k != "orderid"},
                 "orderId": "N-4"}), "refused", "orderId"),
    (json.dumps({k: v for k, v in purchase("N-5").items() if k != "email"}), "refused",
     "email"),
    (json.dumps(purchase("N-6", timestamp="2026-11-27 10:00:00")), "refused", "timestamp"),
    ("[1, 2]", "refused", "must be a JSON object"),
    # Another store's orders: its orderids are its own (OLD-1 is only the default account's).
    (json.dumps({"account": "shop-be", **purchase("OLD-1")}), "new", None),
    (json.dumps({"account": "shop-be", **purchase("BE-1")}), "new", None),
    (json.dumps({"account": "shop-be", **purchase("BE-1")}), "present", None),
    (json.dumps({"account": 7, **purchase("BE-2")}), "refused", "account"),
]



def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in sa.inspect(conn).get_table_names()}


def test_a_dry_run_reports_the_hand_labelled_verdicts_and_writes_nothing(
    cli_env: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    seed_row(engine, "OLD-1")
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(line for line, _, _ in LABELLED) + "\n", encoding="utf-8")
    verdicts = [v for _, v, _ in LABELLED]
    before = table_counts(engine)

    assert main(["import", "--dry-run", str(path)]) == 1
    out = capsys.readouterr().out
    assert table_counts(engine) == before
    assert out.splitlines()[0] == (
        f"dry run, nothing written: would enqueue {verdicts.count('new')}, already present "
        f"{verdicts.count('present')}, would refuse {verdicts.count('refused')}")
    refused = {n: f for n, (_, v, f) in enumerate(LABELLED, start=1) if v == "refused"}
    for number, field in refused.items():
        assert any(line.startswith(f"  line {number}: ") and field in line
                   for line in out.splitlines()), (number, field, out)
    assert "jane.doe@example.com" not in out

    # The real import then does exactly what the dry run announced.
    assert main(["import", str(path)]) == 1
    real = capsys.readouterr().out.splitlines()[0]
    assert real == (f"enqueued {verdicts.count('new')}, already present "
                    f"{verdicts.count('present')}, refused {verdicts.count('refused')}")
