"""docker-compose.yml's healthchecks and Flower's environment-only credentials, run for real
(no Docker here: the same command lines, against real processes on this machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis
import requests

from spotler_outbox.worker.fake_spotler.server import RunningFakeApi
from tests.integration.workers import running_worker, worker_environment
from tests.services import free_port, wait_port
from tests.unit.test_compose import SERVICES, command

AUTH = ("operator", "flower-secret")


def healthcheck(name: str, **replace: str) -> list[str]:
    test = [str(part) for part in SERVICES[name]["healthcheck"]["test"]]
    assert test[0] == "CMD", f"{name}: {test}"
    argv = test[1:]
    for old, new in replace.items():
        argv = [part.replace(old, new) for part in argv]
    return argv


def healthy(argv: list[str], env: dict[str, str]) -> bool:
    # The image's PATH has celery and python; here they are the test's virtualenv.
    path = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    result = subprocess.run(argv, env={**env, "PATH": path}, capture_output=True, timeout=60)
    return result.returncode == 0


def test_the_worker_healthcheck_passes_while_the_worker_answers_and_fails_once_it_is_gone(
    postgres_url: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    env = worker_environment(postgres_url, api.url)
    # In the container the check reads the service's command from PID 1; here it is given.
    check = healthcheck("worker") + command(SERVICES["worker"])
    with running_worker("celery", env, tmp_path):  # celery@%h, as compose runs it
        assert healthy(check, env)
    assert not healthy(check, env)


def test_flower_takes_its_credentials_from_the_environment_and_its_healthcheck_answers(
    postgres_url: str, api: RunningFakeApi, broker: redis.Redis, tmp_path: Path,
) -> None:
    port = str(free_port())
    env = {**worker_environment(postgres_url, api.url), "FLOWER_BASIC_AUTH": ":".join(AUTH)}
    argv = [p.replace("5555", port) for p in command(SERVICES["flower"])]
    flower = subprocess.Popen([sys.executable, "-m", *argv, "--address=127.0.0.1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(int(port))
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/api/workers", timeout=5).status_code == 401
        assert requests.get(f"{base}/api/workers", auth=AUTH, timeout=10).status_code == 200
        assert healthy(healthcheck("flower") + argv, env)
    finally:
        flower.terminate()
        flower.wait(10)
    assert not healthy(healthcheck("flower") + argv, env)
