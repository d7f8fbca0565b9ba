"""Fixtures shared by the integration tests: a fresh fake Spotler API, an empty broker, and
throwaway PostgreSQL and Redis servers for the tests that stop, crash or flip them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from spotler_outbox import migrations
from spotler_outbox.models.settings import reset_settings
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi, start_fake_api
from tests.integration.fixtures import ACCOUNT, API_KEY
from tests.integration.workers import redis_or_skip
from tests.services import ThrowawayPostgres, ThrowawayRedis


@pytest.fixture
def api() -> Iterator[RunningFakeApi]:
    """A fake Spotler API of the test's own: a request it still holds cannot reach another."""
    with start_fake_api(account=ACCOUNT, api_key=API_KEY) as running:
        yield running


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    client = redis_or_skip()
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def cli_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The CLI pointed at the test database; wake-ups off (a CLI test needs no worker)."""
    monkeypatch.setenv("OUTBOX_DATABASE_URL", database_url)
    monkeypatch.setenv("OUTBOX_WAKEUP", "false")
    reset_settings()
    yield database_url
    reset_settings()


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    """A migrated PostgreSQL server of the test's own, to stop, crash or turn read-only."""
    server = ThrowawayPostgres()
    migrations.upgrade(server.url)
    yield server
    server.destroy()


@pytest.fixture
def redis_server() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def django_project() -> Iterator[None]:
    """The test shop's Django project (tests/django_shop), set up once per module."""
    import django

    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_shop.settings"
    try:
        django.setup()  # reads the settings now
    finally:
        # Not inherited by the processes later tests start: Celery would load Django for it.
        del os.environ["DJANGO_SETTINGS_MODULE"]
    yield
    from django.db import connections

    connections.close_all()
