"""The API key never leaks; e-mails are masked in logs; TLS cannot be switched off."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from spotler_outbox.models.errors import OutboxError
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.dispatch import Dispatcher
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi
from spotler_outbox.worker.spotler.client import SpotlerClient
from tests.integration.fixtures import ACCOUNT, API_KEY, delivery_settings, seed

ROOT = Path(__file__).resolve().parents[2]


def all_text_in_tables(engine: Engine) -> str:
    chunks = []
    with engine.connect() as conn:
        for table in ("outbox_events", "delivery_attempts", "dispatch_control"):
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                chunks.extend(str(value) for value in row)
    return "\n".join(chunks)


@pytest.mark.parametrize("faults", [
    Faults(), Faults(auth_failure=True), Faults(fail_next=1, error_status=500),
    Faults(reject_orderids=["S-1"]), Faults(rate_limit_seconds=5),
    Faults(timeout_rate=1.0, timeout_seconds=3),
], ids=["ok", "401", "500", "400", "429", "timeout"])
def test_the_api_key_appears_in_no_log_line_error_or_table_whatever_the_answer(
    database_url: str, engine: Engine, api: RunningFakeApi, faults: Faults,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api.state.set_faults(faults)
    settings = delivery_settings(database_url, api.url, read_timeout=1.0)
    seed(engine, ["S-1", "S-2"], settings)
    dispatcher = Dispatcher(engine, SpotlerClient(settings), settings)
    with caplog.at_level(logging.DEBUG):
        report = dispatcher.run(budget_seconds=3)
        dispatcher.recheck_credentials()
    everything = caplog.text + all_text_in_tables(engine) + repr(report) + repr(settings)
    assert API_KEY not in everything


def test_client_errors_name_the_problem_but_never_the_key() -> None:
    settings = Settings(api_url="http://127.0.0.1:1", account=ACCOUNT, api_key=API_KEY,
                        connect_timeout=0.5)
    with pytest.raises(OutboxError) as raised:
        SpotlerClient(settings).track([{"event": "Purchase"}])
    chain = []
    error: BaseException | None = raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert "could not connect" in chain[0]
    assert all(API_KEY not in text for text in chain)


def test_the_worker_logs_mask_email_addresses(
    database_url: str, engine: Engine, api: RunningFakeApi, capsys: pytest.CaptureFixture[str],
) -> None:
    from spotler_outbox.worker.logs import configure_logging

    api.state.set_faults(Faults(reject_orderids=["S-1"]))
    settings = delivery_settings(database_url, api.url)
    seed(engine, ["S-1"], settings)
    configure_logging(settings)
    try:
        Dispatcher(engine, SpotlerClient(settings), settings).run()
    finally:
        logging.getLogger("spotler_outbox").propagate = True
        logging.getLogger("spotler_outbox").handlers.clear()
    err = capsys.readouterr().err
    assert "parked orderid S-1" in err
    assert "jane.doe@example.com" not in err


def test_the_client_always_verifies_tls_and_ignores_proxy_and_ca_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    client = SpotlerClient(Settings(account="a", api_key="k"))
    assert client.session.verify is True
    assert client.session.trust_env is False


def test_compose_binds_every_port_to_localhost_and_flower_requires_auth() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} publicly"
    # Flower requires auth from its environment (never a command line, where `ps` shows it).
    flower = compose["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert "basic-auth" not in " ".join(flower["command"])
