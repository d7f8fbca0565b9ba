"""The Spotler Activate HTTP client: the only production module that speaks HTTP.

Every outcome of a request is mapped to one class in `classify`, in one place.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import Settings, check_api_url
from spotler_outbox.models.validation import canonical_json
from spotler_outbox.models.version import installed_version
from spotler_outbox.worker.spotler.deadline import DeadlineAdapter, request_deadline
from spotler_outbox.worker.spotler.errors import (
    AuthFailed,
    Misdirected,
    PartialFailure,
    RateLimited,
    Rejected,
    RetryableError,
)

USER_AGENT = f"spotler-outbox/{installed_version()} (+back-end Purchase events)"
EXCERPT_LIMIT = 500


@dataclass(frozen=True)
class Accepted:
    http_status: int
    excerpt: str


def excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_LIMIT else text[:EXCERPT_LIMIT] + "..."


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify(
    status: int, body: str, headers: Mapping[str, str], sent: int
) -> Accepted:
    """Map one HTTP answer to Accepted, or raise the DeliveryError subclass that says what to do."""
    short = excerpt(body)
    if 300 <= status < 400:
        location = headers.get("Location", "?")
        raise Misdirected(f"Spotler answered a redirect (HTTP {status} to {location}): check "
                          "SPOTLER_API_URL; nothing is sent until it answers without one",
                          http_status=status, excerpt=short)
    if status in (401, 403):
        raise AuthFailed(f"Spotler refused the credentials (HTTP {status})",
                         http_status=status, excerpt=short)
    if status == 429:
        raise RateLimited("Spotler is rate limiting (HTTP 429)", http_status=status,
                          excerpt=short, retry_after=parse_retry_after(headers.get("Retry-After")))
    if status == 408 or status >= 500:
        raise RetryableError(f"Spotler answered HTTP {status}", http_status=status, excerpt=short,
                             retry_after=parse_retry_after(headers.get("Retry-After")))
    if 400 <= status < 500:
        raise Rejected(f"Spotler rejected the request (HTTP {status}): {short}",
                       http_status=status, excerpt=short)
    if not 200 <= status < 300:
        raise RetryableError(f"unexpected HTTP {status}", http_status=status, excerpt=short)
    problem = _partial_problem(body, sent)
    if problem:
        raise PartialFailure(f"Spotler answered HTTP {status} but {problem}",
                             http_status=status, excerpt=short)
    return Accepted(status, short)


def _partial_problem(body: str, sent: int) -> str | None:
    """Why a 2xx body says not every event was taken, or None. A non-JSON body is success."""
    try:
        answer = json.loads(body) if body.strip() else None
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    if answer.get("success") is False:
        return "said success: false"
    if answer.get("errors"):
        return "reported errors"
    counts = [answer[k] for k in ("created", "updated") if isinstance(answer.get(k), int)]
    if counts and sum(counts) < sent:
        return f"counted {sum(counts)} of {sent} events"
    return None


class SpotlerClient:
    """A keep-alive session to one Spotler account. The API key lives only in its headers."""

    def __init__(self, settings: Settings, *, account: str | None = None,
                 api_key: str | None = None) -> None:
        """The account of `settings`, or `account` with its `api_key` (another store's)."""
        self.base_url = check_api_url(settings.api_url)
        if account is None:
            account, api_key = settings.account, settings.api_key
            if not account or not api_key:
                raise ConfigurationError("SPOTLER_ACCOUNT and SPOTLER_API_KEY must both be set")
        if not account or not api_key:
            raise ConfigurationError(f"account {account!r}: an account id and an api key "
                                     "are both needed")
        self.account = account
        self.timeout = (settings.connect_timeout, settings.read_timeout)
        # The whole request, connect to last byte: the claim renews its lease to cover this.
        self.deadline = settings.connect_timeout + settings.read_timeout
        self.session = requests.Session()
        adapter = DeadlineAdapter()
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.trust_env = False  # a proxy from the environment must not see the key
        self.session.verify = True
        self.session.headers.update({
            "X-AUTH-ACCOUNT": account,
            "X-AUTH-APIKEY": api_key,
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept": "application/json",
        })

    def track(self, events: Sequence[Mapping[str, Any]]) -> Accepted:
        return self.track_json([canonical_json(e) for e in events])

    def track_json(self, events: Sequence[str]) -> Accepted:
        """POST events given as JSON texts (validated, as enqueue stored them), joined as is."""
        body = '{"events":[' + ",".join(events) + "]}"
        status, text, headers = self._post("/v1/track", body.encode("utf-8"))
        return classify(status, text, headers, len(events))

    def verify_auth(self) -> Accepted:
        status, text, headers = self._post("/v1/verifyAuth?channel=2", b"{}")
        accepted = classify(status, text, headers, 0)
        try:
            verified = json.loads(text).get("verified") is True
        except (ValueError, AttributeError):
            verified = False
        if not verified:
            raise AuthFailed("Spotler did not verify the credentials", http_status=status,
                             excerpt=accepted.excerpt)
        return accepted

    def _post(self, path: str, body: bytes) -> tuple[int, str, Mapping[str, str]]:
        try:
            # Never follow a redirect: requests would turn the POST into a GET (a 2xx to it is
            # no delivery) and carry X-AUTH-APIKEY to whatever host it names.
            with request_deadline(self.deadline) as deadline:
                response = self.session.post(self.base_url + path, data=body,
                                             timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as e:
            if deadline.fired:
                raise RetryableError(f"timed out talking to Spotler: no full answer within "
                                     f"{self.deadline:g}s") from e
            raise _failure(e) from e
        return response.status_code, response.text, response.headers

    def close(self) -> None:
        self.session.close()


def _failure(e: requests.RequestException) -> RetryableError:
    if isinstance(e, requests.Timeout):
        return RetryableError(f"timed out talking to Spotler ({type(e).__name__})")
    if isinstance(e, requests.ConnectionError):
        return RetryableError(f"could not connect to Spotler ({type(e).__name__})")
    return RetryableError(f"request to Spotler failed ({type(e).__name__})")
