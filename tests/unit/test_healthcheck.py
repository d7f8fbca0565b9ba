"""What the container health check asks, read from the main process's command line."""

from __future__ import annotations

import pytest

from spotler_outbox.worker.console.healthcheck import Probe, probe_for


@pytest.mark.parametrize(("argv", "probe"), [
    # Console scripts run as `python /usr/local/bin/celery ...`.
    (["/usr/local/bin/python", "/usr/local/bin/celery", "-A", "spotler_outbox.worker", "worker",
      "--loglevel=INFO", "--pool=threads"], Probe("worker", node="celery@box")),
    (["celery", "-A", "spotler_outbox.worker", "worker", "--hostname", "w1@%h"],
     Probe("worker", node="w1@box")),
    (["celery", "-A", "spotler_outbox.worker", "worker", "-n", "plain"],
     Probe("worker", node="celery@plain")),
    (["/sbin/docker-init", "--", "celery", "-A", "spotler_outbox.worker", "flower",
      "--port=5555", "--basic-auth=u:p"], Probe("flower", "127.0.0.1", 5555)),
    (["celery", "-A", "spotler_outbox.worker", "flower", "--address=0.0.0.0", "--port=7000"],
     Probe("flower", "127.0.0.1", 7000)),
    (["/usr/local/bin/python", "/usr/local/bin/spotler-outbox", "metrics", "--host", "0.0.0.0",
      "--port", "9808"], Probe("metrics", "127.0.0.1", 9808)),
    (["spotler-outbox", "metrics"], Probe("metrics", "127.0.0.1", 9808)),
    (["celery", "-A", "spotler_outbox.worker", "beat", "--schedule=/tmp/celerybeat-schedule"],
     Probe("beat")),
    (["spotler-outbox", "migrate"], Probe("other")),
    ([], Probe("other")),
])
def test_the_probe_follows_the_role_of_the_main_process(argv: list[str], probe: Probe) -> None:
    assert probe_for(argv, "box") == probe
