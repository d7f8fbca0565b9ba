"""Flower, started against the test broker, shows the worker and a finished dispatch task."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import redis
import requests
from sqlalchemy.engine import Engine

from spotler_outbox.models.database import make_engine
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from tests.integration.fixtures import API_KEY
from tests.integration.test_delivery_e2e import all_settled, enqueue_orders, producer_settings
from tests.integration.workers import REDIS_URL, running_worker, wait_for, worker_environment
from tests.services import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
AUTH = ("operator", "flower-secret")


def test_flower_shows_the_worker_and_a_finished_dispatch_task_without_secrets(
    postgres_url: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    env = worker_environment(postgres_url, api.url)
    port = free_port()
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "spotler_outbox.worker", "flower", f"--port={port}",
         "--address=127.0.0.1", f"--basic-auth={AUTH[0]}:{AUTH[1]}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine: Engine = make_engine(postgres_url)
    try:
        wait_port(port)
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/api/workers", timeout=5).status_code == 401
        with running_worker("flowerw", env, tmp_path):
            enqueue_orders(engine, producer_settings(postgres_url), ["FL-1"])
            wait_for(lambda: all_settled(engine, 1), 20, "the delivery")

            def finished_dispatch() -> dict[str, object] | None:
                tasks = requests.get(f"{base}/api/tasks", auth=AUTH, timeout=5).json()
                for task in tasks.values():
                    if task["name"] == "spotler_outbox.dispatch" and task["state"] == "SUCCESS" \
                            and "'delivered': 1" in str(task.get("result")):
                        return dict(task)
                return None

            task = wait_for(finished_dispatch, 20, "Flower to see the dispatch task")
            workers = wait_for(lambda: requests.get(
                f"{base}/api/workers?refresh=1", auth=AUTH, timeout=10).json(),
                30, "Flower's worker list")
            assert any(name.startswith("flowerw@") for name in workers)
            assert task["args"] in ("()", "[]") and task["kwargs"] in ("{}", "")
            everything = requests.get(f"{base}/api/tasks", auth=AUTH, timeout=5).text
            assert API_KEY not in everything and "@example.com" not in everything
            # The row's next_attempt_at is the schedule: no task waits in Redis with an ETA.
            assert [t["eta"] for t in json.loads(everything).values() if t.get("eta")] == []
    finally:
        flower.terminate()
        flower.wait(10)
        engine.dispose()


def test_the_systemd_units_flower_asks_for_the_basic_auth_its_env_file_gives(
    broker: redis.Redis,
) -> None:
    """The unit's own command line, FLOWER_BASIC_AUTH only in the environment (as systemd's
    EnvironmentFile gives it): Flower must still refuse a request without the password."""
    unit = ROOT / "ops" / "systemd" / "spotler-outbox-flower.service"
    exec_start = next(line.split("=", 1)[1] for line in unit.read_text().splitlines()
                      if line.startswith("ExecStart="))
    argv = shlex.split(exec_start)
    port = free_port()
    argv = [sys.executable, "-m", "celery", *argv[1:]]
    argv = [f"--port={port}" if a.startswith("--port=") else a for a in argv]
    env = {**os.environ, "OUTBOX_BROKER_URL": REDIS_URL,
           "FLOWER_BASIC_AUTH": f"{AUTH[0]}:{AUTH[1]}"}
    flower = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/api/workers", timeout=5).status_code == 401
        assert requests.get(f"{base}/api/workers", auth=AUTH, timeout=10).status_code == 200
    finally:
        flower.terminate()
        flower.wait(10)
