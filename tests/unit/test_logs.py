"""Logs mask e-mail addresses and never print the API key."""

from __future__ import annotations

import logging

import pytest

from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.logs import configure_logging, mask_emails


def test_email_addresses_are_masked() -> None:
    assert mask_emails("order for jane.doe@example.com failed") == "order for j***@*** failed"


def test_log_lines_mask_emails_and_the_api_key(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(api_key="k3y-VALUE-123", log_format="json"))
    logger = logging.getLogger("spotler_outbox.test")
    logger.error("sending for %s with %s", "jane@example.com", "k3y-VALUE-123")
    try:
        raise ValueError("key k3y-VALUE-123 for bob@example.org")
    except ValueError:
        logger.exception("boom")
    err = capsys.readouterr().err
    assert "jane@example.com" not in err and "bob@example.org" not in err
    assert "k3y-VALUE-123" not in err
    assert '"level": "error"' in err
