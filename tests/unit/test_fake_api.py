"""The fake Spotler API, spoken to over real HTTP on loopback as the real client will."""

from __future__ import annotations

import email.utils
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from spotler_outbox.worker.fake_spotler.server import (
    Faults,
    RunningFakeApi,
    run_fake_api,
    start_fake_api,
)

ACCOUNT, API_KEY = "acct-1", "key-very-secret-1"
AUTH = {"X-AUTH-ACCOUNT": ACCOUNT, "X-AUTH-APIKEY": API_KEY}


def purchase(orderid: str, **extra: Any) -> dict[str, Any]:
    return {"event": "Purchase", "email": "a@example.com", "orderid": orderid,
            "products": [{"id": "SKU-1", "quantity": 1}], **extra}


@pytest.fixture
def fake() -> Iterator[RunningFakeApi]:
    with start_fake_api(account=ACCOUNT, api_key=API_KEY) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def track(http: requests.Session, fake: RunningFakeApi, body: Any, *, timeout: float = 5,
          headers: dict[str, str] | None = None) -> requests.Response:
    headers = AUTH if headers is None else headers
    return http.post(f"{fake.url}/v1/track", json=body, headers=headers, timeout=timeout)


def received(http: requests.Session, fake: RunningFakeApi) -> dict[str, Any]:
    answer: dict[str, Any] = http.get(f"{fake.url}/_fake/received", timeout=5).json()
    return answer


def set_faults(http: requests.Session, fake: RunningFakeApi, **faults: Any) -> requests.Response:
    return http.post(f"{fake.url}/_fake/faults", json=faults, timeout=5)


# Credentials


def test_the_right_credentials_are_verified(fake: RunningFakeApi, http: requests.Session) -> None:
    answer = http.post(f"{fake.url}/v1/verifyAuth?channel=2", headers=AUTH, timeout=5)
    assert (answer.status_code, answer.json()) == (200, {"verified": True})


def test_a_wrong_api_key_is_refused_by_verify_auth_and_track(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    wrong = {"X-AUTH-ACCOUNT": ACCOUNT, "X-AUTH-APIKEY": "nope"}
    verify = http.post(f"{fake.url}/v1/verifyAuth?channel=2", headers=wrong, timeout=5)
    assert (verify.status_code, verify.json()) == (401, {"verified": False})
    answer = track(http, fake, purchase("1001"), headers=wrong)
    assert answer.status_code == 401
    assert answer.json() == {"success": False, "errors": ["invalid credentials"]}
    assert received(http, fake)["total_events"] == 0


def test_missing_auth_headers_are_refused(fake: RunningFakeApi, http: requests.Session) -> None:
    assert track(http, fake, purchase("1001"), headers={}).status_code == 401


def test_new_credentials_replace_the_old_without_echoing_the_key(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    answer = http.post(f"{fake.url}/_fake/credentials",
                       json={"account": "acct-2", "api_key": "brand-new-key"}, timeout=5)
    assert answer.status_code == 200
    assert "brand-new-key" not in answer.text
    assert track(http, fake, purchase("1001")).status_code == 401
    new = {"X-AUTH-ACCOUNT": "acct-2", "X-AUTH-APIKEY": "brand-new-key"}
    assert track(http, fake, purchase("1001"), headers=new).status_code == 200
    assert "brand-new-key" not in repr(fake.state)


# Body shapes and validation


def test_a_batch_of_events_is_accepted_and_recorded(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    answer = track(http, fake, {"events": [purchase("1001"), purchase("1002")]})
    assert answer.status_code == 200
    assert answer.json() == {"success": True, "created": 2, "updated": 0, "errors": []}
    assert received(http, fake) == {"total_events": 2, "requests": 1,
                                    "orderids": {"1001": 1, "1002": 1}}


def test_a_bare_event_object_is_accepted_as_a_batch_of_one(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    answer = track(http, fake, purchase("1001"))
    assert (answer.status_code, answer.json()["created"]) == (200, 1)
    assert received(http, fake)["orderids"] == {"1001": 1}


def test_an_orderid_sent_twice_is_counted_twice(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    track(http, fake, purchase("1001"))
    track(http, fake, purchase("1001"))
    assert received(http, fake)["orderids"] == {"1001": 2}


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'{"events": {}}',
                                  b'{"events": []}', b"\xff\xfe"])
def test_a_malformed_or_misshapen_body_is_answered_400_with_a_message(
    fake: RunningFakeApi, http: requests.Session, body: bytes,
) -> None:
    answer = http.post(f"{fake.url}/v1/track", data=body, headers=AUTH, timeout=5)
    assert answer.status_code == 400
    assert answer.json()["success"] is False
    assert isinstance(answer.json()["errors"][0], str)
    assert received(http, fake)["total_events"] == 0


def test_a_batch_with_an_invalid_event_is_refused_whole_naming_the_field(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    bad = purchase("1002", email="not-an-address")
    answer = track(http, fake, {"events": [purchase("1001"), bad]})
    assert answer.status_code == 400
    [error] = answer.json()["errors"]
    assert (error["index"], error["orderid"]) == (1, "1002")
    assert any(problem.startswith("email:") for problem in error["problems"])
    assert received(http, fake)["orderids"] == {}


# Faults


def test_error_rate_one_fails_every_track_request_and_records_nothing() -> None:
    with start_fake_api(account=ACCOUNT, api_key=API_KEY, faults=Faults(error_rate=1.0)) as fake, \
            requests.Session() as http:
        statuses = {track(http, fake, purchase(str(n))).status_code for n in range(5)}
        assert statuses == {503}
        assert received(http, fake) == {"total_events": 0, "requests": 5, "orderids": {}}


def test_an_error_rate_with_a_seed_fails_about_that_fraction(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, error_rate=0.5, seed=7)
    statuses = [track(http, fake, purchase(str(n))).status_code for n in range(100)]
    assert 25 <= statuses.count(503) <= 75
    assert statuses.count(200) == received(http, fake)["total_events"]


def test_fail_next_fails_exactly_that_many_requests_with_the_chosen_status(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, fail_next=2, error_status=500)
    statuses = [track(http, fake, purchase("1001")).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert http.get(f"{fake.url}/_fake/faults", timeout=5).json()["fail_next"] == 0


def test_latency_delays_every_track_request(fake: RunningFakeApi, http: requests.Session) -> None:
    set_faults(http, fake, latency_ms=150)
    started = time.monotonic()
    assert track(http, fake, purchase("1001")).status_code == 200
    assert time.monotonic() - started >= 0.15


def test_a_timed_out_request_times_the_client_out_yet_lands_afterwards(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, timeout_rate=1.0, timeout_seconds=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        track(http, fake, purchase("1001"), timeout=0.1)
    assert received(http, fake)["orderids"] == {}
    deadline = time.monotonic() + 3
    while received(http, fake)["orderids"] != {"1001": 1}:
        assert time.monotonic() < deadline, "the timed-out request was never recorded"
        time.sleep(0.05)


def test_a_rate_limit_answers_429_with_retry_after_in_whole_seconds(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, rate_limit_seconds=2.5)
    answer = track(http, fake, purchase("1001"))
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "3"
    assert received(http, fake) == {"total_events": 0, "requests": 1, "orderids": {}}


def test_a_rate_limit_can_give_retry_after_as_an_http_date(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, rate_limit_seconds=30, retry_after_http_date=True)
    answer = track(http, fake, purchase("1001"))
    assert answer.status_code == 429
    when = email.utils.parsedate_to_datetime(answer.headers["Retry-After"]).timestamp()
    assert time.time() + 28 <= when <= time.time() + 32


def test_a_rate_limit_ends_when_its_seconds_are_up(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, rate_limit_seconds=0.3)
    assert track(http, fake, purchase("1001")).status_code == 429
    time.sleep(0.35)
    assert track(http, fake, purchase("1001")).status_code == 200


def test_auth_failure_refuses_even_the_right_credentials(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, auth_failure=True)
    assert track(http, fake, purchase("1001")).status_code == 401
    verify = http.post(f"{fake.url}/v1/verifyAuth?channel=2", headers=AUTH, timeout=5)
    assert (verify.status_code, verify.json()) == (401, {"verified": False})


def test_accept_fewer_takes_all_but_the_last_event_of_a_batch(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, accept_fewer=True)
    answer = track(http, fake, {"events": [purchase("1"), purchase("2"), purchase("3")]})
    assert (answer.status_code, answer.json()["created"]) == (200, 2)
    assert track(http, fake, purchase("4")).json()["created"] == 1
    assert received(http, fake)["orderids"] == {"1": 1, "2": 1, "4": 1}


def test_a_batch_with_a_rejected_orderid_is_refused_whole(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, reject_orderids=["1002"])
    answer = track(http, fake, {"events": [purchase("1001"), purchase("1002")]})
    assert answer.status_code == 400
    assert [e["orderid"] for e in answer.json()["errors"]] == ["1002"]
    assert received(http, fake)["orderids"] == {}
    assert track(http, fake, purchase("1001")).status_code == 200


def test_partial_orderids_are_left_out_of_an_accepted_request_and_reported(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, partial_orderids=["2"])
    answer = track(http, fake, {"events": [purchase("1"), purchase("2")]}).json()
    assert (answer["created"], [e["orderid"] for e in answer["errors"]]) == (1, ["2"])
    alone = track(http, fake, purchase("2")).json()
    assert (alone["created"], len(alone["errors"])) == (0, 1)
    assert received(http, fake)["orderids"] == {"1": 1}


def test_unsuccessful_next_answers_a_bare_success_false_and_takes_nothing(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, unsuccessful_next=1)
    answer = track(http, fake, {"events": [purchase("1"), purchase("2")]})
    assert (answer.status_code, answer.json()) == (200, {"success": False})
    assert received(http, fake)["orderids"] == {}
    assert track(http, fake, purchase("1")).json()["created"] == 1  # the fault is used up
    assert received(http, fake)["orderids"] == {"1": 1}


def test_a_redirect_fault_answers_track_with_its_status_and_location_but_not_verify_auth(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, redirect_status=308)
    answer = http.post(f"{fake.url}/v1/track", json=purchase("1"), headers=AUTH, timeout=5,
                       allow_redirects=False)
    assert (answer.status_code, answer.headers["Location"]) == (308, "/v2/track/")
    verify = http.post(f"{fake.url}/v1/verifyAuth?channel=2", headers=AUTH, timeout=5)
    assert verify.json() == {"verified": True}
    assert received(http, fake)["orderids"] == {}
    assert set_faults(http, fake, redirect_status=200).status_code == 400


def test_a_trickled_answer_counts_its_events_only_once_its_last_byte_is_written(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, trickle_next=2, trickle_seconds=2.0)
    started = time.monotonic()
    assert track(http, fake, purchase("1")).json()["created"] == 1
    assert time.monotonic() - started >= 1.9
    # A client that gives up mid-answer: it reads the status line, then hangs up.
    body = json.dumps(purchase("2")).encode()
    host, port = fake.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                       + b"".join(f"\r\n{k}: {v}".encode() for k, v in AUTH.items())
                       + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        assert client.recv(12) == b"HTTP/1.1 200"
    time.sleep(2.2)
    assert track(http, fake, purchase("3")).status_code == 200  # the fault is used up
    assert received(http, fake)["orderids"] == {"1": 1, "3": 1}
    log = http.get(f"{fake.url}/_fake/requests", timeout=5).json()
    assert [(r.get("trickled"), r.get("completed")) for r in log] == [
        (True, True), (True, False), (None, None)]


def test_faults_apply_in_order_auth_before_rate_limit_before_errors(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, auth_failure=True, rate_limit_seconds=10, fail_next=5)
    assert track(http, fake, purchase("1001")).status_code == 401
    set_faults(http, fake, rate_limit_seconds=10, fail_next=5)
    assert track(http, fake, purchase("1001")).status_code == 429


def test_an_unknown_fault_is_refused_by_from_dict_and_the_admin_endpoint(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    with pytest.raises(ValueError, match=r"unknown fault.*eror_rate"):
        Faults.from_dict({"eror_rate": 1.0})
    answer = set_faults(http, fake, eror_rate=1.0)
    assert answer.status_code == 400
    assert "eror_rate" in answer.json()["error"]


@pytest.mark.parametrize("bad", [{"error_rate": 2}, {"fail_next": -1}, {"auth_failure": "yes"},
                                 {"error_status": 200}, {"reject_orderids": "1001"}])
def test_a_fault_out_of_range_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Faults.from_dict(bad)


def test_the_faults_read_back_as_they_were_set(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    set_faults(http, fake, error_rate=0.25, reject_orderids=[7])
    faults = http.get(f"{fake.url}/_fake/faults", timeout=5).json()
    assert faults == {**Faults().to_dict(), "error_rate": 0.25, "reject_orderids": ["7"]}


# Record, reset, routing


def test_the_payloads_of_an_orderid_are_kept_as_received(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    first, second = purchase("1001", totalvalue=10), purchase("1001", totalvalue=12)
    track(http, fake, first)
    track(http, fake, {"events": [second, purchase("1002")]})
    events = http.get(f"{fake.url}/_fake/events", params={"orderid": "1001"}, timeout=5).json()
    assert events == [first, second]
    assert http.get(f"{fake.url}/_fake/events?orderid=none", timeout=5).json() == []


def test_the_request_log_has_time_status_and_event_count_per_track_request(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    before = time.time()
    track(http, fake, {"events": [purchase("1"), purchase("2")]})
    track(http, fake, purchase("3"), headers={})
    log = http.get(f"{fake.url}/_fake/requests", timeout=5).json()
    assert [(entry["status"], entry["events"]) for entry in log] == [(200, 2), (401, 1)]
    assert all(before <= entry["at"] <= time.time() for entry in log)


def test_reset_clears_the_record_and_the_faults(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    track(http, fake, purchase("1001"))
    set_faults(http, fake, error_rate=1.0)
    assert http.post(f"{fake.url}/_fake/reset", timeout=5).status_code == 200
    assert received(http, fake) == {"total_events": 0, "requests": 0, "orderids": {}}
    assert track(http, fake, purchase("1002")).status_code == 200


def test_an_unknown_path_is_answered_404_in_json(
    fake: RunningFakeApi, http: requests.Session,
) -> None:
    answer = http.get(f"{fake.url}/v2/nothing", timeout=5)
    assert answer.status_code == 404
    assert "error" in answer.json()


# Server


@pytest.mark.parametrize("host", ["0.0.0.0", "", "8.8.8.8", "::"])
def test_a_non_loopback_host_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="refusing"):
        start_fake_api(host)
    with pytest.raises(ValueError, match="refusing"):
        run_fake_api(host)


def test_keep_alive_requests_are_fast(fake: RunningFakeApi, http: requests.Session) -> None:
    # A Nagle stall costs 40 ms a request: 200 of them would take 8 s.
    started = time.monotonic()
    for n in range(200):
        assert track(http, fake, purchase(str(n))).status_code == 200
    assert time.monotonic() - started < 2
    assert received(http, fake)["total_events"] == 200


def test_concurrent_clients_lose_no_events(fake: RunningFakeApi) -> None:
    def send(worker: int) -> None:
        with requests.Session() as http:
            for n in range(50):
                assert track(http, fake, purchase(f"{worker}-{n}")).status_code == 200

    threads = [threading.Thread(target=send, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake.state.received()["total_events"] == 400


def test_a_stopped_fake_refuses_even_an_open_keep_alive_connection(
    http: requests.Session,
) -> None:
    fake = start_fake_api(account=ACCOUNT, api_key=API_KEY)
    assert track(http, fake, purchase("1001")).status_code == 200
    fake.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        track(http, fake, purchase("1002"), timeout=2)


def test_run_fake_api_serves_in_the_foreground_until_sigterm() -> None:
    code = ("from spotler_outbox.worker.fake_spotler.server import run_fake_api; "
            "run_fake_api('127.0.0.1', 0)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split(" on ", 1)[1].split()[0]
        verify = requests.post(f"{url}/v1/verifyAuth?channel=2", timeout=5, headers={
            "X-AUTH-ACCOUNT": "demo-account", "X-AUTH-APIKEY": "demo-key"})
        assert verify.json() == {"verified": True}
        assert "demo-key" not in line
        process.terminate()
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("change, field", [
    ({}, None),
    ({"email": "a" * 64}, None),
    ({"timestamp": "2026-11-27 10:00:00"}, None),  # Spotler reads it as CET: taken
    ({"orderId": "x"}, None),  # unknown fields are ignored by Spotler
    ({"event": "AddToCart"}, "event"),
    ({"email": "not-an-address"}, "email"),
    ({"email": "A" * 64}, "email"),
    ({"orderid": " "}, "orderid"),
    ({"products": []}, "products"),
    ({"products": [{"id": "S", "quantity": 0}]}, "products[0].quantity"),
    ({"products": [{"id": "S", "quantity": True}]}, "products[0].quantity"),
    ({"products": [{"quantity": 1}]}, "products[0].id"),
    ({"products": [{"id": "S", "quantity": 1, "language": "dutch"}]}, "products[0].language"),
    ({"currency": "eur"}, "currency"),
    ({"timestamp": "yesterday"}, "timestamp"),
])
def test_the_fakes_own_rules_refuse_what_spotler_documents_and_nothing_more(
    change: dict[str, Any], field: str | None,
) -> None:
    from spotler_outbox.worker.fake_spotler.rules import problems_of

    problems = problems_of({**purchase("1"), **change})
    if field is None:
        assert problems == []
    else:
        assert [p.split(":")[0] for p in problems] == [field]
