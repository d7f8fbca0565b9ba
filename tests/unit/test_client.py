"""Every HTTP outcome maps to exactly one class, in one place."""

from __future__ import annotations

import email.utils
import time

import pytest

from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import Settings, check_api_url
from spotler_outbox.worker.spotler.client import (
    SpotlerClient,
    classify,
    parse_retry_after,
)
from spotler_outbox.worker.spotler.errors import (
    AuthFailed,
    Misdirected,
    PartialFailure,
    RateLimited,
    Rejected,
    RetryableError,
)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_a_2xx_with_a_plain_or_empty_body_is_accepted(status: int) -> None:
    assert classify(status, "", {}, 3).http_status == status
    assert classify(status, "OK", {}, 3).http_status == status


def test_a_2xx_with_a_full_count_is_accepted() -> None:
    assert classify(200, '{"success": true, "created": 2, "updated": 1}', {}, 3)


@pytest.mark.parametrize("body", ['{"success": false}', '{"errors": ["bad"]}',
                                  '{"success": true, "created": 2}'])
def test_a_2xx_that_says_not_everything_was_taken_is_a_partial_failure(body: str) -> None:
    with pytest.raises(PartialFailure):
        classify(200, body, {}, 3)


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth_failures(status: int) -> None:
    with pytest.raises(AuthFailed):
        classify(status, "", {}, 1)


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_408_and_5xx_are_retryable(status: int) -> None:
    with pytest.raises(RetryableError) as raised:
        classify(status, "", {}, 1)
    assert not isinstance(raised.value, RateLimited)


def test_429_is_a_rate_limit_carrying_retry_after_in_seconds() -> None:
    with pytest.raises(RateLimited) as raised:
        classify(429, "", {"Retry-After": "7"}, 1)
    assert raised.value.retry_after == 7


def test_retry_after_as_an_http_date_is_understood() -> None:
    now = time.time()
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after("garbage") is None


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_other_4xx_are_rejections(status: int) -> None:
    with pytest.raises(Rejected):
        classify(status, '{"errors": ["x"]}', {}, 1)


def test_response_excerpts_are_truncated() -> None:
    with pytest.raises(Rejected) as raised:
        classify(400, "x" * 10_000, {}, 1)
    assert len(raised.value.excerpt) <= 503


@pytest.mark.parametrize("url", ["http://api.squeezely.tech", "ftp://x", "http://10.0.0.1:80",
                                 "api.squeezely.tech"])
def test_plain_http_is_refused_except_to_loopback(url: str) -> None:
    with pytest.raises(ConfigurationError, match="SPOTLER_API_URL"):
        check_api_url(url)


@pytest.mark.parametrize("url", ["https://api.squeezely.tech", "http://127.0.0.1:8900",
                                 "http://localhost:1", "http://[::1]:80"])
def test_https_anywhere_and_http_to_loopback_are_accepted(url: str) -> None:
    assert check_api_url(url) == url


def test_the_client_refuses_to_start_without_credentials() -> None:
    with pytest.raises(ConfigurationError, match="SPOTLER_API_KEY"):
        SpotlerClient(Settings(account="a"))


def test_the_api_key_does_not_appear_in_the_settings_repr() -> None:
    assert "s3cret-key" not in repr(Settings(account="a", api_key="s3cret-key"))


def test_a_redirect_is_never_followed_and_pauses_instead_of_counting_as_delivered() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.send_response(301)
            self.send_header("Location", "http://127.0.0.2:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            seen.append("GET " + self.path)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = SpotlerClient(Settings(api_url=f"http://127.0.0.1:{server.server_port}",
                                        account="a", api_key="k", connect_timeout=1))
        with pytest.raises(Misdirected, match=r"HTTP 301 to http://127\.0\.0\.2:9/elsewhere"):
            client.track([{"event": "Purchase"}])
    finally:
        server.shutdown()
    assert seen == ["/v1/track"]


def test_a_trickling_answer_is_cut_at_connect_plus_read_timeout_though_no_read_times_out(
) -> None:
    from spotler_outbox.worker.fake_spotler.server import Faults, start_fake_api

    settings = Settings(account="a", api_key="k", connect_timeout=0.5, read_timeout=1.0)
    event = {"event": "Purchase", "email": "a@example.com", "orderid": "1",
             "products": [{"id": "S", "quantity": 1}]}
    # A byte every ~0.1 s for 6 s: each read is answered well within the 1 s read timeout.
    with start_fake_api(account="a", api_key="k",
                        faults=Faults(trickle_next=1, trickle_seconds=6.0)) as api:
        client = SpotlerClient(settings.with_overrides(api_url=api.url))
        started = time.monotonic()
        with pytest.raises(RetryableError, match=r"no full answer within 1\.5s"):
            client.track([event])
        took = time.monotonic() - started
        assert client.track([event]).http_status == 200  # the next request is unaffected
        time.sleep(0.5)
        log = api.state.request_log()
    assert 1.5 <= took < 3.0  # cut at the deadline, not after the 6 s the answer takes
    assert log[0]["completed"] is False and log[0]["ended"] - log[0]["at"] < 3.0


@pytest.mark.parametrize("body", ['{"verified": false}', "{}", '{"verified": "true"}',
                                  "not json", '["verified"]'])
def test_verify_auth_answering_200_without_verified_true_is_a_refusal(body: str) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = SpotlerClient(Settings(api_url=f"http://127.0.0.1:{server.server_port}",
                                        account="a", api_key="k", connect_timeout=1))
        with pytest.raises(AuthFailed, match="did not verify the credentials"):
            client.verify_auth()
    finally:
        server.shutdown()
        server.server_close()
