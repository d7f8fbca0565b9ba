"""How the fake Spotler API judges a track request: its faults, the body's shape, validation.

`Faults` is what a test, the demo or the CLI asks for, built from keywords or JSON with every
mistake (a typo in a key, a rate of 2) refused before any request. `ActiveFaults` is the same
set once in force: with the clock, the counter and the seeded dice the answers depend on.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spotler_outbox.worker.fake_spotler.rules import problems_of

_RATES = ("error_rate", "timeout_rate")
_DURATIONS = ("latency_ms", "timeout_seconds", "rate_limit_seconds", "trickle_seconds")
_REDIRECTS = (0, 301, 302, 303, 307, 308)
_FLAGS = ("retry_after_http_date", "auth_failure", "accept_fewer")


@dataclass
class Faults:
    """What the fake does wrong; applied to POST /v1/track in the order the fields are listed.

    A timed-out request is still answered (and its events recorded) once `timeout_seconds` have
    passed: like the real API, the fake may well have taken an order the client gave up on, and
    that ambiguity is what the outbox's exactly-once delivery must survive.
    """

    # A gateway in front of /v1/track answering a redirect (301, 302, 303, 307, 308; 0: none)
    # to every track request; verifyAuth still answers, as a moved or trailing-slash route does.
    redirect_status: int = 0
    auth_failure: bool = False
    # Counted from the moment the faults are set, not per request: a throttled account stays
    # throttled however often the client knocks.
    rate_limit_seconds: float = 0.0
    retry_after_http_date: bool = False
    timeout_rate: float = 0.0
    timeout_seconds: float = 60.0
    latency_ms: float = 0.0
    fail_next: int = 0
    error_rate: float = 0.0
    error_status: int = 503
    reject_orderids: list[str] = field(default_factory=list)
    # 403 plays a WAF or proxy that refuses one payload while the credentials are fine.
    reject_status: int = 400
    accept_fewer: bool = False
    # The next `unsuccessful_next` valid requests are answered 200 with a bare
    # {"success": false}: no count, no errors, and nothing taken.
    unsuccessful_next: int = 0
    # Events with these orderids are left out of an otherwise accepted request: 200 with a
    # count short by them and an error each, a partial answer, also for a one-event request.
    partial_orderids: list[str] = field(default_factory=list)
    # The next `trickle_next` accepted requests get their headers at once, then the body a byte
    # at a time over `trickle_seconds`: a stalled proxy that no per-read timeout ever trips.
    # Their events count as taken only once the last byte is written: a client that hung up
    # first was told nothing, and here nothing was taken.
    trickle_next: int = 0
    trickle_seconds: float = 30.0
    seed: int | None = None
    # The faults hit the requests of these accounts (X-AUTH-ACCOUNT) only; empty: every one.
    only_accounts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in _RATES:
            self._number(name, upper=1.0)
        for name in _DURATIONS:
            self._number(name, upper=None)
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"fault {name}: must be true or false, "
                                 f"got {getattr(self, name)!r}")
        for name in ("fail_next", "trickle_next", "unsuccessful_next"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"fault {name}: must be a whole number >= 0, "
                                 f"got {getattr(self, name)!r}")
        if self.redirect_status not in _REDIRECTS or not _is_int(self.redirect_status):
            raise ValueError(f"fault redirect_status: must be one of "
                             f"{', '.join(map(str, _REDIRECTS))}, got {self.redirect_status!r}")
        if not _is_int(self.error_status) or not 400 <= self.error_status <= 599:
            raise ValueError(f"fault error_status: must be an HTTP status from 400 to 599, "
                             f"got {self.error_status!r}")
        if not _is_int(self.reject_status) or not 400 <= self.reject_status <= 499:
            raise ValueError(f"fault reject_status: must be an HTTP status from 400 to 499, "
                             f"got {self.reject_status!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"fault seed: must be a whole number or null, got {self.seed!r}")
        for name in ("reject_orderids", "partial_orderids"):
            orderids: Any = getattr(self, name)
            if not isinstance(orderids, list | tuple) or not all(
                isinstance(o, str) or _is_int(o) for o in orderids
            ):
                raise ValueError(f"fault {name}: must be a list of orderids, got {orderids!r}")
            # Orderids may arrive as JSON numbers; Spotler reads them as strings.
            setattr(self, name, [str(o) for o in orderids])
        accounts: Any = self.only_accounts
        if not isinstance(accounts, list | tuple) or not all(isinstance(a, str) for a in accounts):
            raise ValueError(f"fault only_accounts: must be a list of account ids, "
                             f"got {accounts!r}")
        self.only_accounts = list(accounts)

    def _number(self, name: str, *, upper: float | None) -> None:
        value = getattr(self, name)
        in_range = (
            isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0 and (upper is None or value <= upper)
        )
        if not in_range:
            bounds = f"from 0 to {upper:g}" if upper is not None else ">= 0"
            raise ValueError(f"fault {name}: must be a number {bounds}, got {value!r}")
        setattr(self, name, float(value))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Build from JSON; an unknown key is refused, as a silently ignored typo tests nothing."""
        if not isinstance(data, Mapping):
            raise ValueError(f"faults must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)}; "
                             f"known faults: {', '.join(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def copy(self) -> Faults:
        return dataclasses.replace(self, reject_orderids=list(self.reject_orderids),
                                   partial_orderids=list(self.partial_orderids),
                                   only_accounts=list(self.only_accounts))


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    trickle_seconds: float = 0.0  # write the body a byte at a time over this long
    # Called with whether the last byte was written: a trickled answer's record waits for it.
    on_sent: Callable[[bool], None] | None = field(default=None, compare=False)


UNAUTHORISED = Reply(401, {"success": False, "errors": ["invalid credentials"]})


class ActiveFaults:
    """The faults in force. Not locked itself: FakeSpotler only calls it under its own lock."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults.copy()
        self._random = random.Random(faults.seed)
        seconds = faults.rate_limit_seconds
        self._rate_limited_until = time.monotonic() + seconds if seconds else 0.0

    def applies_to(self, account: str | None) -> bool:
        """Whether the faults hit a request made with this X-AUTH-ACCOUNT."""
        only = self.faults.only_accounts
        return not only or account in only

    def refusal(self, *, credentials_ok: bool) -> Reply | None:
        """The answer before any work is done: a redirect, auth failure, then the rate limit."""
        if self.faults.redirect_status:
            return Reply(self.faults.redirect_status, {"moved": "/v2/track/"},
                         {"Location": "/v2/track/"})
        if self.faults.auth_failure or not credentials_ok:
            return UNAUTHORISED
        remaining = self._rate_limited_until - time.monotonic()
        if remaining <= 0:
            return None
        return Reply(429, {"success": False, "errors": ["rate limited"]},
                     {"Retry-After": retry_after(remaining, self.faults.retry_after_http_date)})

    def delay(self) -> float:
        """Seconds to sleep before answering: a timeout when the dice say so, then the latency."""
        faults = self.faults
        seconds = faults.latency_ms / 1000
        # No draw when the rate is 0, so adding one fault does not shift another's seeded dice.
        if faults.timeout_rate and self._random.random() < faults.timeout_rate:
            seconds += faults.timeout_seconds
        return seconds

    def failure(self) -> Reply | None:
        """A server error from fail_next (counted down) or error_rate, else None."""
        faults = self.faults
        if faults.fail_next > 0:
            faults.fail_next -= 1
        elif not (faults.error_rate and self._random.random() < faults.error_rate):
            return None
        return Reply(faults.error_status,
                     {"success": False, "errors": ["simulated failure (fake API fault)"]})

    def rejections(self, events: list[Any]) -> list[dict[str, Any]]:
        """An error per event whose orderid is in reject_orderids; the batch fails whole."""
        rejected = self.faults.reject_orderids
        if not rejected:
            return []
        errors = []
        for index, event in enumerate(events):
            orderid = event.get("orderid") if isinstance(event, dict) else None
            if orderid is not None and str(orderid) in rejected:
                errors.append({"index": index, "orderid": orderid,
                               "problems": ["orderid: rejected (fake API fault reject_orderids)"]})
        return errors

    def trickle(self) -> float:
        """Seconds over which to dribble out this accepted answer (0: at once); counts down."""
        if self.faults.trickle_next <= 0:
            return 0.0
        self.faults.trickle_next -= 1
        return self.faults.trickle_seconds

    def unsuccessful(self) -> bool:
        """Whether to answer this valid request with a bare success: false; counts down."""
        if self.faults.unsuccessful_next <= 0:
            return False
        self.faults.unsuccessful_next -= 1
        return True

    def left_out(self, orderids: list[str]) -> set[str]:
        """The orderids of an accepted request that partial_orderids leaves out."""
        return set(orderids) & set(self.faults.partial_orderids)

    def accepted(self, count: int) -> int:
        """How many of a valid batch to take: all, or all but the last under accept_fewer."""
        return count - 1 if self.faults.accept_fewer and count > 1 else count


def retry_after(remaining: float, http_date: bool) -> str:
    """The Retry-After value for `remaining` seconds, rounded up so a client never comes early."""
    if http_date:
        return email.utils.formatdate(math.ceil(time.time() + remaining), usegmt=True)
    return str(max(1, math.ceil(remaining)))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_track_body(body: bytes) -> tuple[list[Any], str | None]:
    """The events of a track body, or a problem; both shapes seen in the wild are accepted."""
    if not body.strip():
        return [], "the body is empty; expected a JSON object"
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return [], f"the body is not valid JSON: {exc}"
    if not isinstance(doc, dict):
        return [], f"the body must be a JSON object, got {type(doc).__name__}"
    if "events" not in doc:
        return [doc], None
    events = doc["events"]
    if not isinstance(events, list):
        return [], '"events" must be an array of events'
    if not events:
        return [], '"events" must hold at least one event'
    return events, None


def validate_batch(events: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The orderids of a batch, or an error per refused event naming its fields (as Spotler).

    Judged by the fake's own rules (rules.py), never the outbox's validator it is testing.
    """
    orderids: list[str] = []
    errors: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        problems = problems_of(event)
        if problems:
            orderid = event.get("orderid") if isinstance(event, dict) else None
            errors.append({"index": index, "orderid": orderid, "problems": problems})
        else:
            orderids.append(str(event["orderid"]))
    return orderids, errors
