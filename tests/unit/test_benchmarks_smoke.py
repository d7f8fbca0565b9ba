"""The benchmarks are not run by the suite, but must not rot unnoticed: their pure parts, the
/proc accounting they rest on, and one tiny run of `./dev bench`'s harness."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import pipeline, procs, scale
from benchmarks.report import Row, at_least, at_most, percentile, render

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_percentile_is_nearest_rank() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert [percentile(values, q) for q in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([7.0], 50) == 7.0
    assert math.isnan(percentile([], 50))


def test_render_takes_medians_and_judges_targets() -> None:
    rows: list[Row | str] = [
        "heading",
        Row("throughput", "eps", target=at_least(20, ">= 20")),
        Row("latency", "lat", "{:.1f}", at_most(100, "<= 100")),
        Row("absent everywhere", "nothing"),
        "a phase that was skipped",
        Row("its figure", "skipped"),
    ]
    runs = [{"eps": 10.0, "lat": 50.0}, {"eps": 30.0, "lat": 500.0}, {"eps": 25.0, "lat": 200.0}]
    text, missed = render(rows, runs)
    assert "| heading" in text
    assert "10 / 30 / 25" in text  # every run, in order
    assert missed == ["latency"]  # judged on the medians (25 and 200), not on any one run
    assert "absent everywhere" not in text and "skipped" not in text


def test_the_scale_benchmark_refuses_a_purge_larger_than_the_history() -> None:
    assert scale.parse_args([]).delivered == 5_000_000
    with pytest.raises(SystemExit):
        scale.parse_args(["--delivered", "10", "--purge", "20"])


def test_a_process_tree_counts_its_children_even_after_they_exit() -> None:
    """The oracle: the CPU the children report spending themselves (process_time)."""
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {BURN.format(s=0.3)!r}])\n"
        f"{BURN.format(s=0.2)}time.sleep(30)\n")])
    try:
        meter = procs.CpuMeter({"tree": procs.process_tree(parent.pid),
                                "top only": lambda: [f"/proc/{parent.pid}/stat"]})
        meter.start()
        deadline = time.monotonic() + 20
        while len(procs.tree(parent.pid)) < 2:  # the grandchild starts burning
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while procs.cpu_ticks(f"/proc/{parent.pid}/stat", reaped=False) < 0.2 * procs.CLK_TCK:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        meter.stop()
        assert procs.tree(parent.pid) == [parent.pid]  # the grandchild has exited
        assert meter.used["tree"] >= 0.45  # 0.3 s in the exited child + 0.2 s in the parent
        assert meter.used["machine"] >= meter.used["tree"] - 0.05
        with procs.MemorySampler(parent.pid, interval=0.01) as memory:
            pass
        assert memory.peak_rss_kb > 1000 and memory.peak_pss_kb > 0
    finally:
        parent.kill()
        parent.wait()


def test_a_tiny_run_of_the_bench_reports_every_figure_of_its_table(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Drains of 1,000 rows at batch 100 (enough CPU for /proc's 10 ms ticks) and 100 at 1,
    on PostgreSQL through real Celery processes and the fake API."""
    name = os.environ.get("TEST_DB_NAME", "spotler_outbox_test") + "_smoke_bench"
    monkeypatch.setitem(pipeline.BACKENDS, "pg", (
        "PostgreSQL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"))
    args = pipeline.parse_args([
        "--rows", "1000", "--rows-one", "100", "--backends", "pg", "--skip", "latency,memory,e2e",
        "--broker-url", os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")])
    try:
        figures, _ = pipeline.measure(args, tmp_path, lambda _: None)
    finally:
        procs.stop_all()
    assert figures["pg_b100_requests"] == 10 and figures["pg_b1_requests"] == 100
    assert figures["pg_b100_extra"] == figures["pg_b1_extra"] == 0  # the fake API's counts
    for batch in (100, 1):
        assert figures[f"pg_b{batch}_us_worker"] > 0 and figures[f"pg_b{batch}_us_db"] > 0
    assert figures["pg_raw"] > 0
    table = {row.key for row in pipeline.table_rows() if isinstance(row, Row)}
    assert set(figures) <= table | {f"pg_b{b}_{k}" for b in (100, 1)
                                    for k in ("rss", "pss", "us_machine")}
