"""Nothing is lost when everything goes wrong at once.

The short run is part of the suite; the long one is `./dev chaos` (CHAOS_ORDERS, CHAOS_SECONDS
and CHAOS_SEED set its size), and writes its figures to chaos-report.json.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosReport, run_chaos


def assert_nothing_lost(report: ChaosReport) -> None:
    print(report.as_json())
    assert report.harness_errors == []  # a fault that failed to inject tested nothing
    assert report.lost == 0
    assert report.stuck == 0
    assert report.failed == 0
    assert report.unexplained_duplicates == []
    assert report.inconsistent_attempts == []


def test_a_short_chaos_run_loses_no_order_and_explains_every_duplicate(tmp_path: Path) -> None:
    report = run_chaos(orders=1500, produce_seconds=40, log_dir=tmp_path, seed=7)
    assert report.worker_kills + report.redis_restarts + report.postgres_restarts >= 3
    assert_nothing_lost(report)


@pytest.mark.chaos
@pytest.mark.timeout(7200)
def test_a_long_chaos_run_loses_no_order_and_explains_every_duplicate(tmp_path: Path) -> None:
    report = run_chaos(
        orders=int(os.environ.get("CHAOS_ORDERS", "100000")),
        produce_seconds=float(os.environ.get("CHAOS_SECONDS", "600")),
        log_dir=tmp_path, seed=int(os.environ.get("CHAOS_SEED", "1")))
    Path("chaos-report.json").write_text(report.as_json())
    assert_nothing_lost(report)
