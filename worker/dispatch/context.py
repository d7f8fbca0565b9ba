"""The few things a claim needs from its dispatcher, as one frozen value, and its report."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, fields

from sqlalchemy.engine import Engine

from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.dispatch.retry_policy import Jitter, RetryPolicy
from spotler_outbox.worker.spotler.client import SpotlerClient

Clock = Callable[[], dt.datetime]


@dataclass(frozen=True)
class DispatchContext:
    engine: Engine
    client: SpotlerClient | None  # the claim's account's client (None outside a claim)
    settings: Settings
    policy: RetryPolicy
    clock: Clock
    jitter: Jitter
    worker_name: str
    account: str = ""  # the account of the claim's rows, as they store it


@dataclass
class DispatchReport:
    """What one dispatch run did: the counts Flower shows as the task's result."""

    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    requests: int = 0
    lost_claims: int = 0
    batches: int = 0
    paused: bool = False  # a 401/403 or a redirect stops its account on every worker
    rate_limited: bool = False  # a 429's Retry-After stops its account on every worker
    budget_spent: bool = False

    def add(self, other: DispatchReport) -> None:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, (mine or theirs) if isinstance(mine, bool) else mine + theirs)

    def as_result(self) -> dict[str, int | bool]:
        return {"claimed": self.claimed, "delivered": self.delivered, "retried": self.retried,
                "failed": self.failed, "released": self.released, "requests": self.requests,
                "paused": self.paused, "rate_limited": self.rate_limited}
