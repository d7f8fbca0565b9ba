"""What can go wrong talking to Spotler: one class per kind of answer, raised by the client.

`outcome` is the name a delivery attempt records for the answer (delivery_attempts.outcome, the
`outcome` label of spotler_outbox_requests_total).
"""

from __future__ import annotations

from typing import ClassVar

from spotler_outbox.models.errors import OutboxError


class DeliveryError(OutboxError):
    """Spotler did not take the request; the subclass says why."""

    outcome: ClassVar[str] = "retryable"

    def __init__(self, message: str, *, http_status: int | None = None, excerpt: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.excerpt = excerpt
        self.retry_after = retry_after  # seconds from a Retry-After header, when there was one


class RetryableError(DeliveryError):
    """Timeout, connection error, 408 or 5xx: try again later."""


class RateLimited(RetryableError):
    """429: the whole account is throttled, not one event."""

    outcome = "rate_limited"


class AuthFailed(DeliveryError):
    """401/403: the credentials are refused (or, if verifyAuth accepts them, the payload)."""

    outcome = "auth_failed"


class Misdirected(DeliveryError):
    """A redirect: the URL is wrong for every event. A POST must not follow it, nor the key."""

    outcome = "redirected"


class Rejected(DeliveryError):
    """Another 4xx: something in the request is bad."""

    outcome = "rejected"


class PartialFailure(DeliveryError):
    """A 2xx whose body says not every event was accepted."""

    outcome = "partial"


OUTCOMES = ("delivered", RetryableError.outcome, RateLimited.outcome, AuthFailed.outcome,
            Misdirected.outcome, Rejected.outcome, PartialFailure.outcome)
