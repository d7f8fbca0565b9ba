"""One settings object, read from the environment lazily, documented everywhere it is used."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from spotler_outbox.models.errors import ConfigurationError
from spotler_outbox.models.settings import (
    Settings,
    get_settings,
    reset_settings,
    secret_file_variables,
)

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


def test_every_secret_can_come_from_a_file_documented_as_such() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    assert "SPOTLER_API_KEY_FILE" in secret_file_variables()
    for name in secret_file_variables():
        assert f"`{name}`" in readme, f"{name} missing from the README"
        assert re.search(rf"^#\s*{name}=", example, re.M), f"{name} missing from .env.example"


def test_a_secret_is_read_from_the_file_its_file_variable_names(tmp_path: Path) -> None:
    secret = tmp_path / "spotler_api_key"
    secret.write_text("key-from-a-docker-secret\n")
    settings = Settings.from_environment({"SPOTLER_API_KEY_FILE": str(secret)})
    assert settings.api_key == "key-from-a-docker-secret"


def test_a_secret_set_both_directly_and_as_a_file_is_refused_naming_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SPOTLER_API_KEY and SPOTLER_API_KEY_FILE"):
        Settings.from_environment({"SPOTLER_API_KEY": "a", "SPOTLER_API_KEY_FILE": "/x"})


def test_an_unreadable_secret_file_is_refused_naming_the_variable_and_path(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigurationError, match=f"OUTBOX_DATABASE_URL_FILE: cannot read "
                                                 f"{missing}: No such file"):
        Settings.from_environment({"OUTBOX_DATABASE_URL_FILE": str(missing)})


def test_a_dotenv_in_the_working_directory_is_read_and_the_environment_wins_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("key-from-file")
    (tmp_path / ".env").write_text(
        "# the shop's outbox\n"
        "export SPOTLER_BATCH_SIZE=25\n"
        "SPOTLER_ACCOUNT='acc-1'   \n"
        "OUTBOX_LOG_FORMAT=json  # a comment\n"
        f"SPOTLER_API_KEY_FILE={key_file}\n"
        "SPOTLER_READ_TIMEOUT=40\n")
    monkeypatch.chdir(tmp_path)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPOTLER_READ_TIMEOUT", "20")
    reset_settings()
    settings = get_settings()
    assert (settings.batch_size, settings.account, settings.log_format) == (25, "acc-1", "json")
    assert settings.api_key == "key-from-file"
    assert settings.read_timeout == 20.0  # the environment wins


def test_a_dotenv_line_that_is_not_name_equals_value_is_refused_with_its_number(
    tmp_path: Path,
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SPOTLER_BATCH_SIZE=5\nthis is not a setting\n")
    with pytest.raises(ConfigurationError, match=r"\.env line 2: expected NAME=value"):
        Settings.from_environment({}, dotenv=dotenv)


def test_a_secret_left_empty_beside_its_file_variable_comes_from_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "account"
    secret.write_text("acc-9")
    settings = Settings.from_environment({"SPOTLER_ACCOUNT": "",
                                          "SPOTLER_ACCOUNT_FILE": str(secret)})
    assert settings.account == "acc-9"
