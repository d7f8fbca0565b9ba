"""Erasure on request (GDPR): one person's e-mail address out of every outbox table.

Matching is by the address or by its SHA-256 (what SPOTLER_HASH_EMAIL stores and Spotler
accepts), as a whole token: erasing a@example.com must not touch aa@example.com's orders. The
database narrows the rows with LIKE; Python confirms each match.

What happens to each order is a decision (`plan_erasure`, pure); `erase` turns it into SQL:
- delivered: the payload and last error are emptied and the row kept as the compact record
  (event, orderid, delivered_at), exactly like retention: a re-enqueue sends nothing;
- failed, pending or in flight (not delivered): the payload is emptied and the row parked as
  failed, never to be sent (an in-flight one may be inside a request to Spotler right now);
- an orderid that itself holds the address cannot be erased: it is the outbox's key;
- someone else's order whose last error merely quotes the address (Spotler's answer to a
  batch they shared) keeps its payload and status: only that text is replaced.
Spotler's answers (attempt excerpts) of every request that carried one of these orders, or
that quote the address, are replaced; so is a pause reason that quotes it.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from spotler_outbox.models.errors import UsageError
from spotler_outbox.models.retention import PURGED_PAYLOAD, attempts_of, compacted_values
from spotler_outbox.models.tables import Status, attempts_table, control, events
from spotler_outbox.models.validation import hash_email_address

ERASED = "[erased on request]"
PARKED_NOTE = "erased on request before delivery: never sent"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def needles_for(text: str) -> tuple[str, ...]:
    """What to look for: the lower-cased address and its SHA-256, or a SHA-256 alone."""
    value = text.strip().lower()
    if _SHA256.fullmatch(value):
        return (value,)
    if "@" not in value or len(value) < 3 or any(c.isspace() for c in value):
        raise UsageError("--email: expected an e-mail address or the SHA-256 of one")
    return (value, hash_email_address(value))


def _token(needle: str) -> re.Pattern[str]:
    if _SHA256.fullmatch(needle):
        return re.compile(rf"(?<![0-9a-f]){needle}(?![0-9a-f])", re.IGNORECASE)
    return re.compile(rf"(?<![\w.+'-]){re.escape(needle)}(?![\w-]|\.\w)", re.IGNORECASE)


def mentions(text: str | None, needles: Sequence[str]) -> bool:
    return bool(text) and any(_token(n).search(text or "") for n in needles)


class Action(enum.StrEnum):
    EMPTY_DELIVERED = "delivered: payload emptied, orderid kept so it is never sent again"
    EMPTY_FAILED = "failed: payload emptied, stays failed and can no longer be retried"
    PARK_UNSENT = "not delivered yet: payload emptied, parked as failed, never sent"
    PARK_IN_FLIGHT = ("being sent right now: payload emptied and parked, but the request in "
                      "flight may still reach Spotler; erase it there too")
    ERROR_TEXT_ONLY = ("of someone else, whose last error quotes the address: that text "
                       "replaced, the order left as it is")


@dataclass(frozen=True)
class Match:
    id: int
    orderid: str
    status: str
    orderid_holds_address: bool
    # False when only last_error quotes the address (Spotler's answer to a shared batch):
    # then the order is someone else's and must still be sent.
    theirs: bool = True


def action_for(status: str, theirs: bool = True) -> Action:
    if not theirs:
        return Action.ERROR_TEXT_ONLY
    return {Status.DELIVERED.value: Action.EMPTY_DELIVERED,
            Status.FAILED.value: Action.EMPTY_FAILED,
            Status.PENDING.value: Action.PARK_UNSENT,
            Status.IN_FLIGHT.value: Action.PARK_IN_FLIGHT}[status]


@dataclass(frozen=True)
class ErasurePlan:
    orders: dict[Action, list[Match]] = field(default_factory=dict)
    attempt_ids: tuple[int, ...] = ()
    pause_reason: bool = False

    @property
    def empty(self) -> bool:
        return not self.orders and not self.attempt_ids and not self.pause_reason

    @property
    def undelivered(self) -> int:
        return sum(len(self.orders.get(a, ())) for a in (Action.PARK_UNSENT,
                                                          Action.PARK_IN_FLIGHT))

    def ids(self, *, theirs: bool) -> list[int]:
        return [m.id for ms in self.orders.values() for m in ms if m.theirs is theirs]

    @property
    def kept_keys(self) -> list[Match]:
        """Orders whose orderid itself holds the address: the key cannot be erased."""
        return [m for ms in self.orders.values() for m in ms if m.orderid_holds_address]


def plan_erasure(matches: Iterable[Match], attempt_ids: Iterable[int],
                 pause_reason: bool) -> ErasurePlan:
    orders: dict[Action, list[Match]] = {}
    for match in matches:
        orders.setdefault(action_for(match.status, match.theirs), []).append(match)
    return ErasurePlan(orders, tuple(sorted(set(attempt_ids))), pause_reason)


def _like_any(column: sa.ColumnElement[str], needles: Sequence[str]) -> sa.ColumnElement[bool]:
    def pattern(n: str) -> str:
        return "%" + n.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return sa.or_(*(sa.func.lower(column).like(pattern(n), escape="\\") for n in needles))


def find(conn: sa.Connection, needles: Sequence[str]) -> ErasurePlan:
    """Every order, attempt and pause reason that mentions the address (a read)."""
    rows = conn.execute(
        sa.select(events.c.id, events.c.orderid, events.c.status, events.c.payload,
                  events.c.last_error)
        .where(sa.or_(_like_any(events.c.payload, needles),
                      _like_any(events.c.last_error, needles),
                      _like_any(events.c.orderid, needles)))
    ).all()
    matches = []
    for r in rows:
        key, payload = mentions(r.orderid, needles), mentions(r.payload, needles)
        if key or payload or mentions(r.last_error, needles):
            matches.append(Match(r.id, r.orderid, r.status, key, theirs=key or payload))
    attempt_ids = set(attempts_of(conn, [m.id for m in matches if m.theirs]))
    for attempt in conn.execute(
        sa.select(attempts_table.c.id, attempts_table.c.response_excerpt)
        .where(_like_any(attempts_table.c.response_excerpt, needles))
    ):
        if mentions(attempt.response_excerpt, needles):
            attempt_ids.add(attempt.id)
    reason = conn.execute(sa.select(control.c.paused_reason)).scalars().all()
    return plan_erasure(matches, attempt_ids, any(mentions(r, needles) for r in reason))


@dataclass(frozen=True)
class ErasureResult:
    emptied_delivered: int
    parked_or_emptied: int
    attempts: int


def erase(conn: sa.Connection, plan: ErasurePlan, *, now: dt.datetime) -> ErasureResult:
    """Carry the plan out, by each row's status at this moment.

    Rows not delivered go first: clearing their claim token means a worker that is sending one
    can no longer mark it delivered, and one it marked before this is emptied just after.
    """
    ids = plan.ids(theirs=True)
    quoted = plan.ids(theirs=False)
    if quoted:
        conn.execute(events.update().where(events.c.id.in_(quoted))
                     .values(last_error=ERASED, updated_at=now))
    parked = delivered = 0
    if ids:
        parked = int(conn.execute(events.update().where(
            events.c.id.in_(ids), events.c.status != Status.DELIVERED.value).values(
            # An emptied payload is no longer what enqueue validated.
            status=Status.FAILED.value, payload=PURGED_PAYLOAD, validated=False,
            last_error=PARKED_NOTE, purged_at=now, updated_at=now, claim_token=None,
            lease_expires_at=None,
        )).rowcount)
        delivered = int(conn.execute(events.update().where(
            events.c.id.in_(ids), events.c.status == Status.DELIVERED.value).values(
            compacted_values(now))).rowcount)
    attempts = 0
    if plan.attempt_ids:
        attempts = int(conn.execute(attempts_table.update().where(
            attempts_table.c.id.in_(list(plan.attempt_ids))).values(
            response_excerpt=ERASED)).rowcount)
    if plan.pause_reason:
        conn.execute(control.update().where(control.c.paused_reason.is_not(None))
                     .values(paused_reason=f"paused; the reason was {ERASED}"))
    return ErasureResult(delivered, parked, attempts)
