"""The Celery settings the README's reliability rests on, read from the live app's config."""

from __future__ import annotations

import pytest

from spotler_outbox.models.settings import reset_settings


@pytest.fixture
def conf(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setenv("OUTBOX_BROKER_URL", "redis://127.0.0.1:6379/9")
    # Long enough that the task's time limit (two leases and more) passes an hour.
    monkeypatch.setenv("OUTBOX_LEASE_SECONDS", "1800")
    reset_settings()
    from spotler_outbox.worker.celery import celery_config

    return celery_config()


def test_a_wake_up_is_acked_late_and_requeued_when_its_worker_is_lost(
    conf: dict[str, object],
) -> None:
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True


def test_each_process_takes_one_message_at_a_time(conf: dict[str, object]) -> None:
    assert conf["worker_prefetch_multiplier"] == 1


def test_redis_redelivers_an_unacked_message_only_well_after_a_lease_ran_out(
    conf: dict[str, object],
) -> None:
    options = conf["broker_transport_options"]
    assert isinstance(options, dict)
    assert options["visibility_timeout"] > 1800 * 3  # the lease set above, and the task limit
    limit = conf["task_time_limit"]
    assert isinstance(limit, int | float) and options["visibility_timeout"] > limit


def test_a_dispatch_may_wait_out_a_database_outage_for_a_lease_past_its_claims_lease(
    conf: dict[str, object],
) -> None:
    # A claim's lease ends at most two leases after the claim; the answer's record is tried
    # for one more (models.ledger): the hard limit must not cut that short.
    limit = conf["task_time_limit"]
    assert isinstance(limit, int | float) and limit >= 3 * 1800


def test_the_app_reads_these_settings_through_its_lazy_config(
    conf: dict[str, object],
) -> None:
    from spotler_outbox.worker.celery import app

    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_reject_on_worker_lost is True
