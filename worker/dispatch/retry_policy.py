"""When to try a failed delivery again: pure functions, randomness passed in for tests."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spotler_outbox.models.claims import ClaimedRow, ScheduledRetry
from spotler_outbox.models.settings import Settings

Jitter = Callable[[], float]


@dataclass(frozen=True)
class RetryPolicy:
    base: float
    cap: float
    max_attempts: int
    max_age: float
    retry_after_cap: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.backoff_base, settings.backoff_cap, settings.max_attempts,
                   settings.max_age, settings.retry_after_cap)

    def delay(self, attempts: int, jitter: Jitter = random.random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempts-1))].

        Spreads a crowd of failed rows over the whole window instead of a thundering herd.
        """
        exponent = min(max(attempts - 1, 0), 62)
        return jitter() * min(self.cap, self.base * 2.0**exponent)

    def bounded_retry_after(self, retry_after: float | None) -> float | None:
        if retry_after is None:
            return None
        return min(max(retry_after, 0.0), self.retry_after_cap)

    def next_attempt(
        self, *, attempts: int, since: dt.datetime, now: dt.datetime,
        retry_after: float | None = None, jitter: Jitter = random.random,
    ) -> dt.datetime | None:
        """The time of the next attempt, or None when the row has run out of attempts or age."""
        if attempts >= self.max_attempts:
            return None
        wait = self.delay(attempts, jitter)
        honoured = self.bounded_retry_after(retry_after)
        if honoured is not None:
            wait = max(wait, honoured)
        at = now + dt.timedelta(seconds=wait)
        if (at - since).total_seconds() > self.max_age:
            return None
        return at

    def hold_seconds(self, retry_after: float | None, jitter: Jitter = random.random) -> float:
        """How long a 429 stops every worker: its Retry-After, or a first backoff step."""
        honoured = self.bounded_retry_after(retry_after)
        return self.delay(1, jitter) + 1.0 if honoured is None else honoured

    def plan_retries(
        self, rows: Sequence[ClaimedRow], *, now: dt.datetime, retry_after: float | None,
        jitter: Jitter = random.random,
    ) -> tuple[list[ScheduledRetry], list[int]]:
        """Each row's next attempt, and the ids of the rows out of attempts or age."""
        retries: list[ScheduledRetry] = []
        exhausted: list[int] = []
        for row in rows:
            at = self.next_attempt(attempts=row.attempts, since=row.retry_window_start, now=now,
                                   retry_after=retry_after, jitter=jitter)
            if at is None:
                exhausted.append(row.id)
            else:
                retries.append(ScheduledRetry(row.id, at))
        return retries, exhausted

    def worst_case_schedule(self) -> float:
        """Seconds from the first to the last attempt if every jitter draw were 1."""
        return sum(min(self.cap, self.base * 2.0 ** (n - 1)) for n in range(1, self.max_attempts))
