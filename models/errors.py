"""The root of the project's one error hierarchy, and the errors of the outbox itself.

The errors of talking to Spotler live next to the client, in worker.spotler.errors, and derive
from OutboxError like these.
"""

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


class UsageError(OutboxError):
    """Arguments that parse but cannot be acted on as given (exit 2, like argparse's own)."""


class NotFound(OutboxError):
    """An operator named an order the outbox does not hold."""


class AnswerNotRecorded(OutboxError):
    """Spotler answered a request, but the outbox database would not take the record of it
    for a lease's length: the rows keep their claim and go again once it runs out."""


def first_line(error: BaseException) -> str:
    """An error's first line, the driver's message for a database error: enough for one log
    line without SQL or parameters (which may carry payloads)."""
    cause = getattr(error, "orig", None) or error
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
