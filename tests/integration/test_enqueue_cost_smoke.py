"""benchmarks/enqueue_cost.py runs (a few transactions): the figures in the README come from it."""

from __future__ import annotations

import pytest

from benchmarks import enqueue_cost
from tests.conftest import TEST_DB, server_url
from tests.integration.workers import REDIS_URL


@pytest.mark.parametrize("database", ["postgresql", "mariadb"])
def test_the_enqueue_cost_benchmark_reports_both_kinds_and_their_ratio(database: str) -> None:
    cost = enqueue_cost.measure(database, transactions=20,
                                url=server_url(database, database=f"{TEST_DB}_enqueue_cost"),
                                broker_url=REDIS_URL)
    assert cost.enqueue.call_ms > 0 and cost.raw_insert.call_ms > 0
    assert f"{cost.ratio:.2f}x" in cost.line()
    # PostgreSQL's third kind: the raw INSERT never prepared, as the enqueue's statements.
    assert (cost.raw_unprepared is not None) == (database == "postgresql")
