"""The Grafana dashboard and the alert rules in ops/ read only series that are really served.

The served names come from live scrapes: the exporter against a real database, and Flower's
own /metrics (for flower_* series), never from a list kept by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from spotler_outbox.worker.console import exporter as metrics
from tests.conftest import in_ci
from tests.integration.test_metrics import attempt, seed_busy_outbox
from tests.integration.workers import REDIS_URL, redis_or_skip
from tests.services import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "spotler-outbox-dashboard.json"
ALERTS = ROOT / "ops" / "prometheus-alerts.yml"
PROMETHEUS = ROOT / "ops" / "prometheus.yml"
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "sum", "min", "max", "avg", "group",
                "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
                "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
# Series Prometheus makes itself for every scrape.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count", ""), "gauge": ("",), "untyped": ("",)}


def served(text: str) -> dict[str, set[str]]:
    """Series name -> its label names, from a /metrics page, samples or not yet."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def metric_names(expr: str) -> set[str]:
    """The series an expression reads: identifiers that are no function, keyword or label."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()\b", bare))
    functions = set(re.findall(r"([A-Za-z_]+)\s*\(", bare))
    return names - functions - PROMQL_WORDS


def selected_labels(expr: str) -> dict[str, set[str]]:
    """Series name -> label names its {...} selectors and by (...) clauses use."""
    used: dict[str, set[str]] = {}
    for name, selector in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr):
        used.setdefault(name, set()).update(re.findall(r"([A-Za-z_]\w*)\s*[=!]~?", selector))
    for grouping, inner in re.findall(r"\bby\s*\(([^)]*)\)\s*\(([^()]*\([^()]*\)[^()]*)\)",
                                      expr):
        for name in metric_names(inner):
            used.setdefault(name, set()).update(g.strip() for g in grouping.split(","))
    return used


@pytest.fixture
def exporter_series(database_url: str, engine: Engine) -> dict[str, set[str]]:
    row_id = seed_busy_outbox(engine)
    server, thread = metrics.start_exporter(metrics.exporter_engine(database_url), "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        requests.get(url, timeout=10)
        attempt(engine, row_id, metrics.utc_now(), 120, "delivered", 2)
        return served(requests.get(url, timeout=10).text)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def flower() -> Iterator[tuple[int, dict[str, set[str]]]]:
    """A live Flower on the test broker: its port and the series its /metrics serves."""
    redis_or_skip()
    port = free_port()
    env = {"OUTBOX_BROKER_URL": REDIS_URL, "PATH": str(Path(sys.executable).parent)}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "spotler_outbox.worker", "flower",
         f"--port={port}", "--address=127.0.0.1", "--basic-auth=operator:secret"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        # Unauthenticated, as ops/prometheus.yml scrapes it.
        response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert response.status_code == 200
        yield port, served(response.text)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def flower_series(flower: tuple[int, dict[str, set[str]]]) -> dict[str, set[str]]:
    return flower[1]


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {f"{panel['title']} / {target['refId']}": target["expr"]
            for panel in dashboard["panels"] for target in panel["targets"]}


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: str(rule["expr"]) for group in rules["groups"]
            for rule in group["rules"]}


def test_every_dashboard_panel_and_alert_reads_only_series_that_are_served(
    exporter_series: dict[str, set[str]], flower_series: dict[str, set[str]],
) -> None:
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    expressions = {**dashboard_expressions(), **alert_expressions()}
    assert len(expressions) >= 20

    for where, expr in expressions.items():
        names = metric_names(expr)
        assert names, f"{where}: no series found in {expr!r}"
        for name in names:
            source = flower_series if name.startswith("flower_") else exporter_series
            assert name in source or name in PROMETHEUS_SERIES, f"{where} reads {name}"
        for name, labels in selected_labels(expr).items():
            if name in exporter_series:
                assert labels <= exporter_series[name], f"{where}: {name} has no {labels}"
        for job in re.findall(r'job\s*=\s*"([^"]+)"', expr):
            assert job in jobs, f"{where} selects job {job!r}, not scraped by prometheus.yml"


def test_the_dashboard_shows_the_operators_questions() -> None:
    everything = " ".join(dashboard_expressions().values())
    for series in ("spotler_outbox_rows", "spotler_outbox_oldest_due_age_seconds",
                   "spotler_outbox_delivered_events_total", "spotler_outbox_requests_total",
                   "spotler_outbox_request_duration_seconds_bucket", "spotler_outbox_paused",
                   "spotler_outbox_rate_limited_until_seconds", "flower_worker_online"):
        assert series in everything, f"no panel shows {series}"


def test_the_dashboard_is_an_import_ready_export_with_one_datasource_input() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    assert "id" not in dashboard or dashboard["id"] is None  # Grafana assigns it on import
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panel_ids = [p["id"] for p in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        assert panel["type"] in {"stat", "timeseries"}


def test_prometheus_scrapes_the_exporter_and_flower_and_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"]
               for job in config["scrape_configs"]}
    assert targets == {"spotler-outbox": ["127.0.0.1:9808"], "flower": ["127.0.0.1:5555"]}
    assert "prometheus-alerts.yml" in config["rule_files"]


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (outcome) (rate(spotler_outbox_requests_total{job="x"}[5m])) * 60',
     {"spotler_outbox_requests_total"}),
    ("histogram_quantile(0.9, sum by (le) (rate(a_bucket[5m])))", {"a_bucket"}),
    ("up == 0 or b == 0", {"up", "b"}),
    ("c > bool 0", {"c"}),
])
def test_metric_names_finds_the_series_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# --- a real Prometheus -----------------------------------------------------------------------

PROMETHEUS_BINARY = shutil.which("prometheus")


def prometheus_or_skip() -> str:
    if PROMETHEUS_BINARY is None:
        message = "no prometheus binary (Debian: apt-get install prometheus)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return PROMETHEUS_BINARY


@contextmanager
def running_prometheus(config: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    binary = prometheus_or_skip()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_port(port)
        wait_until(lambda: requests.get(f"{base}/-/ready", timeout=5).status_code == 200, 30,
                   "ready Prometheus")
        yield base
    finally:
        process.terminate()
        process.wait(20)


def query(base: str, expr: str) -> list[Any]:
    answer = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr!r}: {answer.get('error')}"
    result: list[Any] = answer["data"]["result"]
    return result


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.5)


@pytest.mark.timeout(120)
def test_a_real_prometheus_with_ops_config_evaluates_every_panel_and_alert(
    postgres_url: str, flower: tuple[int, dict[str, set[str]]], tmp_path: Path,
) -> None:
    engine = metrics.exporter_engine(postgres_url)
    row_id = seed_busy_outbox(engine)
    server, thread = metrics.start_exporter(engine, "127.0.0.1", 0)
    config = yaml.safe_load(PROMETHEUS.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ALERTS)]
    ports = {"spotler-outbox": server.server_port, "flower": flower[0]}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    try:
        with running_prometheus(config, tmp_path) as base:
            wait_until(lambda: len(query(base, "up == 1")) == 2, 30, "scrape of both targets")
            attempt(engine, row_id, metrics.utc_now(), 120, "delivered", 2)
            wait_until(lambda: bool(query(
                base, "increase(spotler_outbox_requests_total[1m]) > 0")), 30, "counted request")
            rules = requests.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
            alerts = {r["name"]: r for g in rules for r in g["rules"]}
            for where, expr in dashboard_expressions().items():
                result = query(base, expr)
                if "flower_" not in expr:
                    assert result, f"{where}: {expr!r} has no data"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        engine.dispose()

    assert set(alerts) == set(alert_expressions())
    assert all(rule["health"] == "ok" for rule in alerts.values()), alerts
    # The seeded outbox has failed rows and a pause: those alerts are at least pending.
    assert alerts["SpotlerOutboxFailedRows"]["state"] == "firing"
    assert alerts["SpotlerOutboxPaused"]["state"] in ("pending", "firing")
    assert alerts["SpotlerOutboxExporterDown"]["state"] == "inactive"
    assert alerts["SpotlerOutboxNoWorker"]["state"] == "pending"  # Flower sees no worker here
