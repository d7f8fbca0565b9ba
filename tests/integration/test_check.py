"""`spotler-outbox check --send-test-purchase` against the fake Spotler API: it shows what it
would send and sends it only with --yes, exactly as shown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spotler_outbox.models.settings import reset_settings
from spotler_outbox.worker.fake_spotler.server import RunningFakeApi, start_fake_api
from tests.integration.fixtures import run_cli

ACCOUNT, API_KEY = "acct-check", "check-key-that-must-never-show"
EMAIL = "tester@example.com"
SCRIPT = Path(sys.executable).with_name("spotler-outbox")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningFakeApi]:
    with start_fake_api(account=ACCOUNT, api_key=API_KEY) as running:
        monkeypatch.setenv("SPOTLER_API_URL", running.url)
        monkeypatch.setenv("SPOTLER_ACCOUNT", ACCOUNT)
        monkeypatch.setenv("SPOTLER_API_KEY", API_KEY)
        reset_settings()
        yield running
    reset_settings()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code, out, err = run_cli(capsys, *argv)
    assert API_KEY not in out + err
    return code, out


def shown_body(out: str) -> dict[str, Any]:
    """The JSON body the command printed (the lines from the first '{' to its closing '}')."""
    lines = out.splitlines()
    start = lines.index("{")
    end = lines.index("}", start)
    body: dict[str, Any] = json.loads("\n".join(lines[start:end + 1]))
    return body


def test_without_yes_it_shows_the_purchase_sends_nothing_and_says_how_to_send_it(
    fake: RunningFakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "check", "--send-test-purchase", "--email", EMAIL, "--sku", "SKU-9")

    assert code == 2
    assert "verifyAuth: OK" in out and "Nothing sent" in out
    assert fake.state.received()["requests"] == 0
    event = shown_body(out)["events"][0]
    assert event["products"] == [{"id": "SKU-9", "quantity": 1, "price": 0.0}]
    assert re.search(rf"--orderid {re.escape(event['orderid'])} --yes", out)
    assert EMAIL not in out


def test_with_yes_and_the_shown_orderid_it_sends_exactly_what_it_showed(
    fake: RunningFakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    _, dry_run = run(capsys, "check", "--send-test-purchase", "--email", EMAIL, "--sku", "SKU-9")
    orderid = shown_body(dry_run)["events"][0]["orderid"]

    code, out = run(capsys, "check", "--send-test-purchase", "--email", EMAIL, "--sku", "SKU-9",
                    "--orderid", orderid, "--yes")

    assert code == 0
    assert fake.state.received()["orderids"] == {orderid: 1}
    received = fake.state.events_for(orderid)[0]
    assert received["email"] == EMAIL
    # Shown with the address masked; otherwise the very event Spotler received, both times.
    assert {**received, "email": "t***@***"} == shown_body(dry_run)["events"][0] \
        == shown_body(out)["events"][0]
    assert "track: Spotler answered HTTP 200" in out
    assert '"Api inserted / api verified"' in out and orderid in out


def test_without_yes_and_without_a_terminal_it_does_not_wait_for_an_answer(
    fake: RunningFakeApi,
) -> None:
    env = {**os.environ, "SPOTLER_API_URL": fake.url, "SPOTLER_ACCOUNT": ACCOUNT,
           "SPOTLER_API_KEY": API_KEY}
    result = subprocess.run([str(SCRIPT), "check", "--send-test-purchase", "--email", EMAIL],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=60, env=env, check=False)

    assert result.returncode == 2, result.stderr
    assert "Nothing sent" in result.stdout
    assert fake.state.received()["requests"] == 0
