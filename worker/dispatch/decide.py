"""What to do with Spotler's answer to one request: a pure function returning a value.

`decide` is the only place that reads an answer; worker.dispatch.settle is the only place that
turns the decision into SQL. The table of cases is tests/unit/test_decide.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spotler_outbox.worker.spotler.errors import (
    AuthFailed,
    DeliveryError,
    Misdirected,
    PartialFailure,
    RateLimited,
    Rejected,
)


class Act(enum.Enum):
    DELIVER = "deliver"  # mark every row of the request delivered
    RETRY = "retry"  # each row backs off by its own attempts (or fails when they run out)
    PARK = "park"  # the one event of the request is bad: failed, with the reason
    PAUSE = "pause"  # stop every worker until verifyAuth passes; rows back, no attempt counted
    HOLD = "hold"  # stop every worker until Retry-After has passed; rows back, none counted
    HALVE = "halve"  # one event of the request is bad: send each half on its own
    EACH_ALONE = "each_alone"  # some events were not taken: send each once more, alone
    VERIFY_CREDENTIALS = "verify_credentials"  # ask verifyAuth, then decide again


class Credentials(enum.Enum):
    UNKNOWN = "unknown"  # verifyAuth not asked during this claim
    WORK = "work"  # verifyAuth accepts them
    REFUSED = "refused"  # verifyAuth refuses them too


@dataclass(frozen=True)
class Decision:
    act: Act
    outcome: str  # what the attempt row records
    reason: str | None = None  # last_error of the rows, the pause's reason
    retry_after: float | None = None  # seconds Spotler asked for, unbounded

    @property
    def splits(self) -> bool:
        return self.act in (Act.HALVE, Act.EACH_ALONE)


DELIVERED = Decision(Act.DELIVER, "delivered")


def decide(
    error: DeliveryError | None, *, events: int, credentials: Credentials = Credentials.UNKNOWN
) -> Decision:
    """Spotler's answer (None: a 2xx that took every event) -> what to do with the request."""
    if error is None:
        return DELIVERED
    reason = str(error)
    if isinstance(error, Misdirected):
        # Not the events' fault and not the key's: a gateway redirecting. Nothing may be sent
        # until it stops; verifyAuth's recheck resumes, and the next request tells.
        return Decision(Act.PAUSE, error.outcome, reason)
    if isinstance(error, AuthFailed):
        if credentials is Credentials.UNKNOWN:
            return Decision(Act.VERIFY_CREDENTIALS, error.outcome, reason)
        if credentials is Credentials.REFUSED:
            return Decision(Act.PAUSE, error.outcome, reason)
        # The key works, so a proxy or WAF refuses something in the events: pausing would
        # resume, refuse again, and loop for ever.
        reason = (f"{reason} although verifyAuth accepts the credentials: something in the "
                  "event is refused")
        return _one_is_bad(Rejected.outcome, reason, events, split=Act.HALVE)
    if isinstance(error, RateLimited):
        return Decision(Act.HOLD, error.outcome, reason, retry_after=error.retry_after)
    if isinstance(error, Rejected):
        return _one_is_bad(error.outcome, reason, events, split=Act.HALVE)
    if isinstance(error, PartialFailure):
        # We cannot tell which events were taken: each goes once more alone, never again in a
        # batch, so a repeat that Spotler must merge on orderid happens at most once.
        return _one_is_bad(error.outcome, reason, events, split=Act.EACH_ALONE)
    return Decision(Act.RETRY, error.outcome, reason, retry_after=error.retry_after)


def _one_is_bad(outcome: str, reason: str, events: int, *, split: Act) -> Decision:
    return Decision(split if events > 1 else Act.PARK, outcome, reason)
