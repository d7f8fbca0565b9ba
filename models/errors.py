"""The project's one error hierarchy."""

from __future__ import annotations


class OutboxError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigurationError(OutboxError):
    """A setting is missing or malformed."""


class InvalidEvent(OutboxError):
    """An event fails validation; `problems` lists every problem, each with its field path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid Purchase event: " + "; ".join(self.problems))


class DeliveryError(OutboxError):
    """Sending to Spotler did not succeed; subclasses say what to do about it."""

    def __init__(self, message: str, *, http_status: int | None = None, excerpt: str = "") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.excerpt = excerpt


class RetryableError(DeliveryError):
    """Timeout, connection error, 408, 429 or 5xx: try again later."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        excerpt: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, http_status=http_status, excerpt=excerpt)
        self.retry_after = retry_after


class RateLimited(RetryableError):
    """429: the whole account is throttled, not one event."""


class AuthFailed(DeliveryError):
    """401/403: the credentials are wrong for every event; pause, do not burn attempts."""


class Misdirected(AuthFailed):
    """A redirect: the URL is wrong for every event (a POST must not follow it, nor the key)."""


class Rejected(DeliveryError):
    """Another 4xx: something in the request is bad."""


class PartialFailure(DeliveryError):
    """A 2xx whose body says not every event was accepted."""


class UsageError(OutboxError):
    """Arguments that parse but cannot be acted on as given (exit 2, like argparse's own)."""


class NotFound(OutboxError):
    """An operator named an order the outbox does not hold."""
