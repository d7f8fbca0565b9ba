"""The container health check against live processes: the exporter, Flower-less ports, a
real Celery worker on the test broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis
from sqlalchemy.engine import Engine

from spotler_outbox.worker.console import exporter
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from tests.integration.workers import running_worker, worker_environment
from tests.services import free_port

MODULE = "spotler_outbox.worker.console.healthcheck"


def health(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", MODULE, *argv], capture_output=True,
                            text=True, timeout=60, env=env, check=False)
    return result.returncode, result.stdout.strip()


def test_an_exporter_that_answers_is_healthy_and_a_silent_port_is_not(
    database_url: str, engine: Engine
) -> None:
    server, thread = exporter.start_exporter(engine, "127.0.0.1", 0)
    try:
        port = server.server_port
        code, why = health(["spotler-outbox", "metrics", "--host", "0.0.0.0", "--port",
                            str(port)])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    assert (code, why) == (0, f"metrics at http://127.0.0.1:{port}/metrics: HTTP 200")
    code, why = health(["spotler-outbox", "metrics", "--port", str(free_port())])
    assert code == 1 and "ConnectionError" in why


def test_a_running_worker_answers_the_ping_and_an_absent_one_does_not(
    postgres_url: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    env = worker_environment(postgres_url, api.url)
    with running_worker("healthw", env, tmp_path):
        code, why = health(["celery", "-A", "spotler_outbox.worker", "worker",
                            "--hostname=healthw@%h"], env)
    assert code == 0, why
    code, why = health(["celery", "-A", "spotler_outbox.worker", "worker",
                        "--hostname=nobody@%h"], env)
    assert code == 1 and "no answer" in why
