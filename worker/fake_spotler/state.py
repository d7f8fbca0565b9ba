"""What the fake Spotler API knows: each account's key, the faults, and every event it accepted.

The HTTP side (server.py) only parses requests and hands them here, so a test can also drive
this state directly and read the record the server keeps.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

from spotler_outbox.worker.fake_spotler.faults import (
    UNAUTHORISED,
    ActiveFaults,
    Faults,
    Reply,
    parse_track_body,
    validate_batch,
)


class FakeSpotler:
    """The fake's state: credentials, faults and the record, behind one lock for handler threads."""

    def __init__(
        self, account: str = "demo-account", api_key: str = "demo-key",
        faults: Faults | None = None, *, account_field: str | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {}  # account -> api key: one Spotler account per store
        # The event field that names the account an event belongs to (test data carries it):
        # an event sent with another account's headers is refused and counted.
        self.account_field = account_field
        self._misdirected = 0
        self._per_account: dict[str, dict[str, int]] = {}
        self._active = ActiveFaults(faults or Faults())
        self._counts: dict[str, int] = {}
        self._payloads: dict[str, list[Any]] = {}
        self._log: list[dict[str, Any]] = []
        self._total_events = 0
        self.set_credentials(account, api_key)

    def __repr__(self) -> str:
        # Deliberately without the API keys: reprs end up in logs and assertion messages.
        return f"FakeSpotler(accounts={sorted(self._keys)!r}, events={self._total_events})"

    def set_credentials(self, account: str, api_key: str) -> None:
        """Make `account` the one account, with `api_key`."""
        self.set_accounts({account: api_key})

    def set_accounts(self, keys: dict[str, str]) -> None:
        """Replace every account: {"<account id>": "<api key>", ...}."""
        if not keys or not all(isinstance(a, str) and a and isinstance(k, str) and k
                               for a, k in keys.items()):
            raise ValueError("account and api_key must be non-empty strings")
        with self._lock:
            self._keys = dict(keys)

    def set_account_key(self, account: str, api_key: str) -> None:
        """Add `account`, or change its key; the other accounts stay."""
        if not (isinstance(account, str) and account and isinstance(api_key, str) and api_key):
            raise ValueError("account and api_key must be non-empty strings")
        with self._lock:
            self._keys[account] = api_key

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._active.faults.copy()

    def set_faults(self, faults: Faults) -> None:
        """Replace every fault; a rate limit runs from now."""
        active = ActiveFaults(faults)
        with self._lock:
            self._active = active

    def reset(self) -> None:
        """Forget every request and every fault; the credentials stay."""
        with self._lock:
            self._counts.clear()
            self._per_account.clear()
            self._misdirected = 0
            self._payloads.clear()
            self._log.clear()
            self._total_events = 0
            self._active = ActiveFaults(Faults())

    def received(self) -> dict[str, Any]:
        """Events accepted, track requests received (whatever their answer), count per orderid."""
        with self._lock:
            return {"total_events": self._total_events, "requests": len(self._log),
                    "orderids": dict(self._counts)}

    def received_by_account(self) -> dict[str, Any]:
        """Accepted events counted per account (its X-AUTH-ACCOUNT) and orderid, and the events
        refused because they came with another account's headers (see account_field)."""
        with self._lock:
            return {"accounts": {a: dict(c) for a, c in self._per_account.items()},
                    "misdirected_events": self._misdirected}

    def events_for(self, orderid: str) -> list[Any]:
        """The accepted payloads for `orderid`, as they arrived, oldest first."""
        with self._lock:
            return list(self._payloads.get(orderid, ()))

    def request_log(self) -> list[dict[str, Any]]:
        """Per track request: {"at": epoch seconds of the answer, "arrived": of the arrival,
        "account": its X-AUTH-ACCOUNT, "status": int, "events": events in it}.

        A trickled answer adds "trickled": True, "completed" (whether its last byte was
        written; None while it is still being written) and "ended" (epoch seconds).
        """
        with self._lock:
            return [dict(entry) for entry in self._log]

    def verify_auth(self, account: str | None, api_key: str | None) -> Reply:
        with self._lock:
            refused = self._active.faults.auth_failure and self._active.applies_to(account)
            ok = not refused and self._credentials_ok(account, api_key)
        return Reply(200 if ok else 401, {"verified": ok})

    def track(
        self, account: str | None, api_key: str | None, body: bytes,
        sleep: Callable[[float], object] = time.sleep,
    ) -> Reply:
        """Answer one POST /v1/track, applying the faults in their documented order; faults
        limited to other accounts (only_accounts) leave this request alone."""
        arrived = time.time()
        # Parsed up front so every log entry can count the events, even of a refused request.
        events, shape_problem = parse_track_body(body)
        count = len(events)
        seen = {"arrived": arrived, "account": account}
        with self._lock:
            active = self._active if self._active.applies_to(account) else None
            credentials_ok = self._credentials_ok(account, api_key)
            if active is None:
                if not credentials_ok:
                    return self._logged(UNAUTHORISED, count, seen)
                delay = 0.0
            else:
                refusal = active.refusal(credentials_ok=credentials_ok)
                if refusal is not None:
                    return self._logged(refusal, count, seen)
                delay = active.delay()
        # Outside the lock: one slow request must not stall the other connections. A sleep cut
        # short by stop() answers nothing: a stopped fake must not go on recording events.
        if delay > 0 and sleep(delay) is True:
            return self._finish(Reply(503, {"success": False, "errors": ["stopping"]}), count,
                                seen)
        rejections: list[dict[str, Any]] = []
        kept = count
        if active is not None:
            with self._lock:
                failure = active.failure()
                if failure is not None:
                    return self._logged(failure, count, seen)
                rejections = active.rejections(events)
                kept = active.accepted(count)
        if shape_problem is not None:
            return self._finish(Reply(400, {"success": False, "errors": [shape_problem]}), count,
                                seen)
        if rejections:
            assert active is not None
            return self._finish(Reply(active.faults.reject_status,
                                      {"success": False, "errors": rejections}), count, seen)
        orderids, errors = validate_batch(events)
        with self._lock:
            errors += self._misdirected_errors(account, events)
            left_out = active.left_out(orderids) if active is not None else set()
        if errors:
            return self._finish(Reply(400, {"success": False, "errors": errors}), count, seen)
        with self._lock:
            # Only for a request that passed every check: the answer blames no event.
            if active is not None and active.unsuccessful():
                return self._logged(Reply(200, {"success": False}), count, seen)
        taken = [(orderid, event) for orderid, event in zip(orderids[:kept], events[:kept],
                                                            strict=True)
                 if orderid not in left_out]
        answer = {"success": True, "created": len(taken), "updated": 0,
                  "errors": [{"orderid": orderid, "problems": ["not taken (fake API fault "
                                                               "partial_orderids)"]}
                             for orderid in sorted(left_out)]}
        with self._lock:
            trickle = active.trickle() if active is not None else 0
            if not trickle:
                self._record(taken, account)
                return self._logged(Reply(200, answer), count, seen)
            entry = {"at": time.time(), "status": 200, "events": count, "trickled": True,
                     "completed": None, "ended": None, **seen}
            self._log.append(entry)

        def sent(completed: bool) -> None:
            with self._lock:
                entry.update(completed=completed, ended=time.time())
                if completed:
                    self._record(taken, account)

        return Reply(200, answer, trickle_seconds=trickle, on_sent=sent)

    def _record(self, taken: list[tuple[str, Any]], account: str | None) -> None:
        """Count accepted events, also per account; the caller holds the lock."""
        per_account = self._per_account.setdefault(account or "", {})
        for orderid, payload in taken:
            self._counts[orderid] = self._counts.get(orderid, 0) + 1
            per_account[orderid] = per_account.get(orderid, 0) + 1
            self._payloads.setdefault(orderid, []).append(payload)
        self._total_events += len(taken)

    def _misdirected_errors(self, account: str | None,
                            events: list[Any]) -> list[dict[str, Any]]:
        """An error per event that names another account than the request's headers; the
        caller holds the lock."""
        field = self.account_field
        if field is None:
            return []
        errors = []
        for index, event in enumerate(events):
            owner = event.get(field) if isinstance(event, dict) else None
            if owner != account:
                self._misdirected += 1
                errors.append({"index": index, "problems": [
                    f"{field}: the event belongs to account {owner!r} but came with the "
                    f"credentials of account {account!r}"]})
        return errors

    def _credentials_ok(self, account: str | None, api_key: str | None) -> bool:
        if account is None or api_key is None:
            return False
        # compare_digest so that even the fake does not teach a timing side channel by example.
        expected = self._keys.get(account, "")
        return bool(expected) and hmac.compare_digest(api_key.encode(), expected.encode())

    def _logged(self, reply: Reply, count: int, seen: dict[str, Any] | None = None) -> Reply:
        """Append to the request log; the caller holds the lock."""
        self._log.append({"at": time.time(), "status": reply.status, "events": count,
                          **(seen or {})})
        return reply

    def _finish(self, reply: Reply, count: int, seen: dict[str, Any]) -> Reply:
        with self._lock:
            return self._logged(reply, count, seen)
