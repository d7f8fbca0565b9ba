"""The benchmark's pure parts: it is not run by the suite, but must not rot unnoticed."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from benchmarks import pipeline, procs
from benchmarks.report import Row, at_least, at_most, percentile, render


def test_percentile_is_nearest_rank() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 50) == 7.0
    assert math.isnan(percentile([], 50))


def test_render_takes_medians_and_judges_targets() -> None:
    rows: list[Row | str] = [
        "heading",
        Row("throughput", "eps", target=at_least(20, ">= 20")),
        Row("latency", "lat", "{:.1f}", at_most(100, "<= 100")),
        Row("absent everywhere", "nothing"),
    ]
    runs = [{"eps": 10.0, "lat": 50.0}, {"eps": 30.0, "lat": 500.0}, {"eps": 25.0, "lat": 200.0}]
    text, missed = render(rows, runs)
    assert "| heading" in text
    assert "10 / 30 / 25" in text  # every run, in order
    # Judged on the medians (25 and 200), not on any single run.
    assert missed == ["latency"]
    assert "absent everywhere" not in text


def test_render_reports_a_missed_median() -> None:
    text, missed = render([Row("x", "x", target=at_least(2, ">= 2"))], [{"x": 1.0}])
    assert missed == ["x"] and "MISS" in text


def test_parse_args_defaults_match_the_brief() -> None:
    args = pipeline.parse_args([])
    assert (args.orders, args.repeat, args.latency_ms, args.batch_size) == (10000, 3, 0.0, 100)
    assert args.pool == "prefork"
    with pytest.raises(SystemExit):
        pipeline.parse_args(["--orders", "10"])


def test_every_table_row_names_a_figure_a_run_produces() -> None:
    keys = {row.key for row in pipeline.table_rows(pipeline.parse_args([])) if isinstance(row, Row)}
    produced = {"e2e", "enqueue_rate", "lat_p50", "lat_p95", "lat_p99", "requests",
                "extra_received", "rss", "pss", "drain", "e2e_one", "enqueue_rate_one",
                "extra_received_one", "ratio_batch", "ratio_drain", "raw_cm", "raw_cam",
                "frac_cm", "frac_cam", "frac_drain_cm", "tx_plain_p50", "tx_enqueue_p50",
                "enqueue_added", "idle_p50", "idle_p95", "idle_max"}
    cores = {f"{prefix}{part}" for prefix in ("cores_", "cores_one_")
             for part in ("worker", "postgres", "fake_api", "producer", "redis", "other",
                          "machine")}
    assert keys <= produced | cores


def test_proc_readers_see_a_child_and_its_memory() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert child.pid in procs.children(os.getpid())
        with procs.MemorySampler(os.getpid(), interval=0.01) as sampler:
            pass
        assert sampler.peak_rss_kb > 1000
        assert sampler.peak_rss_each_kb[child.pid] > 0
        assert procs.cpu_seconds([os.getpid()]) > 0
        assert procs.machine_busy_seconds() > 0
    finally:
        child.kill()
        child.wait()
