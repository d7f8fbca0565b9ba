"""The table of decisions: every kind of answer, batch size and state of the credentials."""

from __future__ import annotations

import pytest

from spotler_outbox.worker.dispatch.decide import Act, Credentials, decide
from spotler_outbox.worker.spotler.errors import (
    AuthFailed,
    DeliveryError,
    Misdirected,
    PartialFailure,
    RateLimited,
    Rejected,
    RetryableError,
)

UNKNOWN, WORK, REFUSED = Credentials.UNKNOWN, Credentials.WORK, Credentials.REFUSED
REDIRECT = Misdirected("Spotler answered a redirect (HTTP 308 to /v2/track/)", http_status=308)
REFUSED_KEY = AuthFailed("Spotler refused the credentials (HTTP 401)", http_status=401)
THROTTLED = RateLimited("rate limited", http_status=429, retry_after=7.0)
THROTTLED_NO_HEADER = RateLimited("rate limited", http_status=429)
BAD = Rejected("Spotler rejected the request (HTTP 400)", http_status=400)
PARTIAL = PartialFailure("counted 3 of 4 events", http_status=200)
DOWN = RetryableError("Spotler answered HTTP 503", http_status=503, retry_after=2.0)
TIMEOUT = RetryableError("timed out talking to Spotler")

# error, events in the request, credentials -> act, outcome recorded, retry_after carried
TABLE: list[tuple[DeliveryError | None, int, Credentials, Act, str, float | None]] = [
    (None, 1, UNKNOWN, Act.DELIVER, "delivered", None),
    (None, 100, WORK, Act.DELIVER, "delivered", None),
    # A redirect is the gateway's, never the events' nor the key's: whatever verifyAuth says,
    # and however many events, it pauses; it never splits or parks.
    (REDIRECT, 1, UNKNOWN, Act.PAUSE, "redirected", None),
    (REDIRECT, 8, UNKNOWN, Act.PAUSE, "redirected", None),
    (REDIRECT, 8, WORK, Act.PAUSE, "redirected", None),
    (REDIRECT, 1, WORK, Act.PAUSE, "redirected", None),
    (REDIRECT, 8, REFUSED, Act.PAUSE, "redirected", None),
    (REFUSED_KEY, 8, UNKNOWN, Act.VERIFY_CREDENTIALS, "auth_failed", None),
    (REFUSED_KEY, 8, REFUSED, Act.PAUSE, "auth_failed", None),
    (REFUSED_KEY, 8, WORK, Act.HALVE, "rejected", None),
    (REFUSED_KEY, 1, WORK, Act.PARK, "rejected", None),
    (THROTTLED, 8, UNKNOWN, Act.HOLD, "rate_limited", 7.0),
    (THROTTLED_NO_HEADER, 8, UNKNOWN, Act.HOLD, "rate_limited", None),
    (BAD, 8, UNKNOWN, Act.HALVE, "rejected", None),
    (BAD, 1, UNKNOWN, Act.PARK, "rejected", None),
    (PARTIAL, 4, UNKNOWN, Act.EACH_ALONE, "partial", None),
    (PARTIAL, 1, UNKNOWN, Act.PARK, "partial", None),
    (DOWN, 8, UNKNOWN, Act.RETRY, "retryable", 2.0),
    (TIMEOUT, 1, UNKNOWN, Act.RETRY, "retryable", None),
]


@pytest.mark.parametrize("error, events, credentials, act, outcome, retry_after", TABLE)
def test_each_answer_leads_to_the_decision_in_the_table(
    error: DeliveryError | None, events: int, credentials: Credentials, act: Act, outcome: str,
    retry_after: float | None,
) -> None:
    decision = decide(error, events=events, credentials=credentials)
    assert (decision.act, decision.outcome, decision.retry_after) == (act, outcome, retry_after)


def test_a_redirect_pauses_with_its_location_in_the_reason_and_is_never_taken_for_the_events(
) -> None:
    decision = decide(REDIRECT, events=8, credentials=WORK)
    assert decision.act is Act.PAUSE and not decision.splits
    assert "/v2/track/" in (decision.reason or "")


def test_a_401_while_verify_auth_accepts_the_key_says_so_in_the_reason_it_parks_with() -> None:
    decision = decide(REFUSED_KEY, events=1, credentials=WORK)
    assert "verifyAuth accepts the credentials" in (decision.reason or "")
