"""What a dispatch run did: the counts Flower shows as the dispatch task's result."""

from __future__ import annotations

from dataclasses import dataclass, fields

from spotler_outbox.models.ledger import Settled


@dataclass
class DispatchReport:
    """Output only: nothing reads it to decide what to do next."""

    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    requests: int = 0
    # Rows whose claim passed to another worker while this one held them: the one count that
    # signals a possible repeat.
    lost_claims: int = 0
    batches: int = 0
    paused: bool = False  # a 401/403 or a redirect stops its account on every worker
    rate_limited: bool = False  # a 429's Retry-After stops its account on every worker
    budget_spent: bool = False

    def add(self, other: DispatchReport) -> None:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, (mine or theirs) if isinstance(mine, bool) else mine + theirs)

    def add_settled(self, settled: Settled) -> None:
        """What one answer did; released and lost rows are counted by the claim's ledger."""
        self.delivered += settled.delivered
        self.retried += settled.retried
        self.failed += settled.failed
        self.paused = self.paused or settled.paused
        self.rate_limited = self.rate_limited or settled.rate_limited

    def as_result(self) -> dict[str, int | bool]:
        return {"claimed": self.claimed, "delivered": self.delivered, "retried": self.retried,
                "failed": self.failed, "released": self.released, "requests": self.requests,
                "lost_claims": self.lost_claims, "paused": self.paused,
                "rate_limited": self.rate_limited}
