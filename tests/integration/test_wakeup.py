"""The order system never waits for, or fails because of, the broker."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from spotler_outbox import enqueue_purchase
from spotler_outbox.models import wakeup
from spotler_outbox.models.settings import Settings
from tests.conftest import purchase
from tests.integration.fixtures import statuses


def test_an_enqueue_commits_at_once_when_the_broker_is_down(
    engine: Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = Settings(database_url=database_url, broker_url="redis://127.0.0.1:1/0")
    existing = wakeup._wakers.get(down.broker_url)
    failed_before = existing.failed if existing else 0
    logger = logging.getLogger("spotler_outbox.wakeup")
    logger.addHandler(caplog.handler)
    try:
        started = time.monotonic()
        with Session(engine) as session, session.begin():
            enqueue_purchase(session, purchase("N-1"), settings=down)
        assert time.monotonic() - started < 1.0
        assert statuses(engine) == {"N-1": "pending"}
        waker = wakeup._wakers[down.broker_url]
        deadline = time.monotonic() + 15
        while waker.failed == failed_before and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        logger.removeHandler(caplog.handler)
    assert waker.failed > failed_before
    assert "the sweeper will pick the order up" in caplog.text
