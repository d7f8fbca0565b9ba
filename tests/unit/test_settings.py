"""One settings object, read from the environment lazily, documented everywhere it is used."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import Settings, get_settings, reset_settings

ROOT = Path(__file__).resolve().parents[2]
ENV_NAMES = sorted(f.metadata["env"] for f in fields(Settings))


def test_every_setting_is_documented_in_the_readme_and_env_example() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for name in ENV_NAMES:
        assert f"`{name}`" in readme, f"{name} missing from the README's table"
        assert re.search(rf"^{name}=", example, re.M), f"{name} missing from .env.example"


def test_settings_are_read_from_the_environment_on_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPOTLER_BATCH_SIZE", "7")
    monkeypatch.setenv("SPOTLER_HASH_EMAIL", "yes")
    reset_settings()
    assert get_settings().batch_size == 7 and get_settings().hash_email is True


@pytest.mark.parametrize("name, value, message", [
    ("SPOTLER_BATCH_SIZE", "many", "SPOTLER_BATCH_SIZE: expected a number"),
    ("SPOTLER_BATCH_SIZE", "0", "SPOTLER_BATCH_SIZE: must be between 1 and 1000"),
    ("SPOTLER_MULTI_CURRENCY", "maybe", "SPOTLER_MULTI_CURRENCY: expected true or false"),
    ("OUTBOX_LEASE_SECONDS", "10", "OUTBOX_LEASE_SECONDS: must exceed"),
    ("OUTBOX_RETENTION_DAYS", "-1", "OUTBOX_RETENTION_DAYS: must be 0"),
    ("OUTBOX_RETENTION_DAYS", "30d", "OUTBOX_RETENTION_DAYS: expected a number"),
    ("OUTBOX_SWEEP_INTERVAL_SECONDS", "0", "OUTBOX_SWEEP_INTERVAL_SECONDS: must be more than 0"),
])
def test_a_malformed_setting_is_refused_naming_the_variable(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_environment({name: value})
