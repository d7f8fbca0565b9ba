"""The API key never leaks; e-mails are masked in logs; TLS cannot be switched off."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from spotler_outbox.models.errors import OutboxError
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.dispatch import Dispatcher
from spotler_outbox.worker.fake_spotler.server import Faults, RunningFakeApi
from spotler_outbox.worker.spotler.client import SpotlerClient
from spotler_outbox.worker.spotler.errors import RetryableError
from tests.conftest import purchase
from tests.integration.fixtures import (
    ACCOUNT,
    API_KEY,
    delivery_settings,
    insert_raw,
    row,
    seed,
)

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

    # A shop that wrote the e-mail where the orderid goes: the parking reason quotes the
    # payload's orderid, so the address reaches the worker's log line.
    insert_raw(engine, "S-9", json.dumps(purchase("jane.doe@example.com")))
    settings = delivery_settings(database_url, api.url)
    configure_logging(settings)
    try:
        Dispatcher(engine, SpotlerClient(settings), settings).run()
    finally:
        logging.getLogger("spotler_outbox").propagate = True
        logging.getLogger("spotler_outbox").handlers.clear()
    err = capsys.readouterr().err
    assert "jane.doe@example.com" in (row(engine, "S-9").last_error or "")  # in the table
    [line] = [line for line in err.splitlines() if "parked orderid S-9" in line]
    assert "orderid: the payload says 'j***@***'" in line
    assert "jane.doe@example.com" not in err


@pytest.fixture
def self_signed_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """An HTTPS server on loopback with a self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    seen: list[str] = []

    class Accepting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Accepting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_port}", cert, seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_with_a_self_signed_certificate_is_refused_whatever_the_environment_says(
    self_signed_server: tuple[str, Path, list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, cert, seen = self_signed_server
    # The server works for a client told to trust it: the refusal below is the verification.
    assert requests.post(url + "/probe", data=b"{}", verify=str(cert), timeout=5).ok
    # An environment that would make requests trust the certificate, or skip checks.
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, str(cert))
    monkeypatch.setenv("PYTHONHTTPSVERIFY", "0")
    client = SpotlerClient(Settings(api_url=url, account=ACCOUNT, api_key=API_KEY,
                                    connect_timeout=2, read_timeout=2))
    with pytest.raises(RetryableError, match="SSLError") as refused:
        client.track([purchase("TLS-1")])
    with pytest.raises(RetryableError, match="SSLError"):
        client.verify_auth()
    assert seen == ["/probe"]  # the handshake failed: no request, no key, reached the server
    assert API_KEY not in str(refused.value)


def test_compose_binds_every_port_to_localhost_and_flower_requires_auth() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} publicly"
    # Flower requires auth from its environment (never a command line, where `ps` shows it).
    flower = compose["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert "basic-auth" not in " ".join(flower["command"])
