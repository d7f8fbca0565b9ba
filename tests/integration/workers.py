"""Real Celery worker processes (Redis broker) for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import in_ci

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as e:
        if in_ci():
            pytest.fail(f"Redis not reachable at {REDIS_URL}: {e}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {e}")
    return client


def worker_environment(database_url: str, api_url: str, *, as_role: str | None = None,
                       **extra: str) -> dict[str, str]:
    """as_role="worker" runs the workers as the least-privilege user `spotler-outbox grants`
    creates, instead of the migrations' owner."""
    from tests.integration.fixtures import ACCOUNT, API_KEY
    from tests.integration.roles import role_urls

    if as_role is not None:
        database_url = role_urls(database_url)[as_role]

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OUTBOX_", "SPOTLER_"))}
    env.update({
        "OUTBOX_DATABASE_URL": database_url,
        "OUTBOX_BROKER_URL": REDIS_URL,
        "SPOTLER_API_URL": api_url,
        "SPOTLER_ACCOUNT": ACCOUNT,
        "SPOTLER_API_KEY": API_KEY,
        "SPOTLER_CONNECT_TIMEOUT": "1",
        "SPOTLER_READ_TIMEOUT": "3",
        "OUTBOX_LEASE_SECONDS": "8",
        "OUTBOX_BACKOFF_BASE_SECONDS": "0.1",
        "OUTBOX_BACKOFF_CAP_SECONDS": "0.5",
        "OUTBOX_SWEEP_INTERVAL_SECONDS": "0.5",
        "OUTBOX_AUTH_RECHECK_SECONDS": "0.5",
        "OUTBOX_DISPATCH_TIME_BUDGET_SECONDS": "5",
    })
    env.update(extra)
    return env


class WorkerProcess:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *,
                 concurrency: int = 2, pool: str = "prefork",
                 prefix: Sequence[str] = ()) -> None:
        """`prefix`: a command the worker runs under (libfaketime's `faketime`, say)."""
        self.log_path = log_dir / f"{name}.log"
        command = [*prefix, sys.executable, "-m", "celery", "-A", "spotler_outbox.worker", "worker",
                   "--loglevel=INFO", f"--hostname={name}@%h", f"--pool={pool}",
                   f"--concurrency={concurrency}", "--without-mingle", "--without-gossip"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2], start_new_session=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.output()}")
            if " ready." in self.output():
                return
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool children."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@contextmanager
def running_worker(name: str, env: dict[str, str], log_dir: Path, *,
                   concurrency: int = 2, pool: str = "prefork",
                   prefix: Sequence[str] = ()) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(name, env, log_dir, concurrency=concurrency, pool=pool,
                           prefix=prefix)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
