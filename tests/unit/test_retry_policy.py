"""The backoff schedule: exponential, full jitter, capped, bounded by attempts and age."""

from __future__ import annotations

import datetime as dt
import itertools

from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.dispatch.retry_policy import RetryPolicy

POLICY = RetryPolicy(base=30, cap=21600, max_attempts=17, max_age=86400, retry_after_cap=3600)
NOW = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)


def test_the_delay_doubles_with_each_attempt_until_the_cap() -> None:
    delays = [POLICY.delay(n, jitter=lambda: 1.0) for n in range(1, 13)]
    assert delays[:4] == [30, 60, 120, 240]
    assert delays[-1] == 21600
    assert all(b >= a for a, b in itertools.pairwise(delays))


def test_full_jitter_draws_anywhere_between_zero_and_the_ceiling() -> None:
    assert POLICY.delay(3, jitter=lambda: 0.0) == 0
    assert POLICY.delay(3, jitter=lambda: 0.5) == 60


def test_the_default_schedule_spans_about_a_day() -> None:
    policy = RetryPolicy.from_settings(Settings())
    worst = policy.worst_case_schedule()
    # Full jitter halves the expected wait: the expected span is about a day.
    assert 0.8 * 86400 <= worst / 2 <= 1.5 * 86400


def test_a_row_that_used_its_last_attempt_gets_no_next_attempt() -> None:
    assert POLICY.next_attempt(attempts=17, since=NOW, now=NOW) is None
    assert POLICY.next_attempt(attempts=16, since=NOW, now=NOW, jitter=lambda: 0) == NOW


def test_a_row_older_than_the_maximum_age_gets_no_next_attempt() -> None:
    old = NOW - dt.timedelta(days=1, seconds=1)
    assert POLICY.next_attempt(attempts=1, since=old, now=NOW, jitter=lambda: 0) is None


def test_retry_after_is_honoured_but_bounded() -> None:
    at = POLICY.next_attempt(attempts=1, since=NOW, now=NOW, retry_after=120,
                             jitter=lambda: 0)
    assert at == NOW + dt.timedelta(seconds=120)
    at = POLICY.next_attempt(attempts=1, since=NOW, now=NOW, retry_after=10**9,
                             jitter=lambda: 0)
    assert at == NOW + dt.timedelta(seconds=3600)


def test_a_429_holds_for_its_retry_after_whatever_a_backoff_step_would_be() -> None:
    for retry_after in (0.5, 3, 45, 600):
        assert POLICY.hold_seconds(retry_after, jitter=lambda: 1.0) == retry_after
        assert POLICY.hold_seconds(retry_after, jitter=lambda: 0.0) == retry_after


def test_a_429_hold_is_bounded_by_the_retry_after_cap() -> None:
    assert POLICY.hold_seconds(10**9, jitter=lambda: 1.0) == 3600


def test_a_429_without_retry_after_holds_for_a_jittered_first_backoff_step_plus_a_second() -> None:
    assert POLICY.hold_seconds(None, jitter=lambda: 0.0) == 1.0
    assert POLICY.hold_seconds(None, jitter=lambda: 1.0) == 31.0
