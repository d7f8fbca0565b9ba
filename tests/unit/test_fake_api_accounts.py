"""The fake Spotler API with several accounts: each request's headers are checked against the
account of every event in it, and faults can hit one account only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi, start_fake_api
from tests.conftest import purchase

KEYS = {"shop-nl": "nl-key", "shop-be": "be-key"}


def headers(account: str, key: str | None = None) -> dict[str, str]:
    return {"X-AUTH-ACCOUNT": account, "X-AUTH-APIKEY": key or KEYS[account]}


@pytest.fixture
def fake() -> Iterator[RunningFakeApi]:
    with start_fake_api(accounts=KEYS, account_field="custom_store") as running:
        yield running


def track(fake: RunningFakeApi, account: str, *stores: str, key: str | None = None) -> Any:
    events = [purchase(str(i), custom_store=store) for i, store in enumerate(stores)]
    return requests.post(f"{fake.url}/v1/track", json={"events": events},
                         headers=headers(account, key), timeout=5)


def test_each_account_has_its_own_key_and_its_own_count_of_orderids(
    fake: RunningFakeApi,
) -> None:
    assert track(fake, "shop-nl", "shop-nl", "shop-nl").status_code == 200
    assert track(fake, "shop-be", "shop-be").status_code == 200
    assert track(fake, "shop-be", "shop-be", key="nl-key").status_code == 401
    answer = requests.get(f"{fake.url}/_fake/received_by_account", timeout=5).json()
    assert answer == {"accounts": {"shop-nl": {"0": 1, "1": 1}, "shop-be": {"0": 1}},
                      "misdirected_events": 0}
    assert [e["account"] for e in fake.state.request_log()] == ["shop-nl", "shop-be", "shop-be"]


def test_an_event_sent_with_another_accounts_headers_is_refused_and_counted(
    fake: RunningFakeApi,
) -> None:
    answer = track(fake, "shop-nl", "shop-nl", "shop-be")
    assert answer.status_code == 400
    assert "belongs to account 'shop-be'" in answer.text
    assert fake.state.received_by_account() == {"accounts": {}, "misdirected_events": 1}


def test_faults_for_one_account_leave_the_others_alone(fake: RunningFakeApi) -> None:
    fake.state.set_faults(Faults(rate_limit_seconds=30, only_accounts=["shop-be"]))
    assert track(fake, "shop-be", "shop-be").status_code == 429
    assert track(fake, "shop-nl", "shop-nl").status_code == 200
    fake.state.set_faults(Faults(auth_failure=True, only_accounts=["shop-be"]))
    verify = f"{fake.url}/v1/verifyAuth"
    assert requests.post(verify, headers=headers("shop-be"), timeout=5).status_code == 401
    assert requests.post(verify, headers=headers("shop-nl"), timeout=5).status_code == 200
    with pytest.raises(ValueError, match="only_accounts"):
        Faults(only_accounts="shop-be")  # type: ignore[arg-type]
