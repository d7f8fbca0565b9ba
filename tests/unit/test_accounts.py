"""Accounts: how a row's account is stored, and reading the accounts file without leaking a key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spotler_outbox.models.accounts import account_keys, read_accounts_file, row_account
from spotler_outbox.models.errors import ConfigurationError, InvalidEvent
from spotler_outbox.models.settings import Settings

KEY = "secret-key-must-not-show-4b1d"


@pytest.mark.parametrize(("given", "default", "stored"), [
    (None, "shop-nl", ""),  # no account: the default one
    ("shop-nl", "shop-nl", ""),  # the default account by name: the same row as without it
    ("shop-be", "shop-nl", "shop-be"),
    (" shop-be ", "", "shop-be"),
    ("shop-be", "", "shop-be"),
])
def test_the_default_account_is_stored_one_way_whether_named_or_not(
    given: str | None, default: str, stored: str
) -> None:
    assert row_account(given, Settings(account=default)) == stored


def test_an_account_that_is_not_a_short_string_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidEvent, match="account: must be a string"):
        row_account(12, Settings())  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="account: at most 64 characters"):
        row_account("x" * 65, Settings())


def test_the_file_and_the_single_pair_both_give_credentials(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps({"shop-be": "key-be", "shop-de": "key-de"}))
    keys = account_keys(Settings(account="shop-nl", api_key="key-nl", accounts_file=str(path)))
    # Rows that spell the default account out (plain SQL) are sent with its key too.
    assert keys.credentials == {"": ("shop-nl", "key-nl"), "shop-nl": ("shop-nl", "key-nl"),
                                "shop-be": ("shop-be", "key-be"),
                                "shop-de": ("shop-de", "key-de")}
    assert account_keys(Settings(accounts_file=str(path))).accounts == ["shop-be", "shop-de"]
    assert account_keys(Settings(account="shop-nl", api_key="k")).accounts == ["", "shop-nl"]


@pytest.mark.parametrize(("content", "problem"), [
    ('{"shop-be": "' + KEY + '", ', "is not valid JSON (line 1"),
    ('["' + KEY + '"]', "must hold a JSON object"),
    ('{"shop-be": ["' + KEY + '"]}', "the api key of account 'shop-be' must be a non-empty"),
    ('{"shop-be": ""}', "the api key of account 'shop-be' must be a non-empty"),
    ('{"": "' + KEY + '"}', "account id '' must be 1 to 64"),
])
def test_a_bad_accounts_file_names_the_problem_and_never_the_key(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "accounts.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as raised:
        read_accounts_file(str(path))
    assert problem in str(raised.value) and "SPOTLER_ACCOUNTS_FILE" in str(raised.value)
    assert KEY not in str(raised.value) and KEY not in repr(raised.value.__cause__)


def test_a_missing_accounts_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SPOTLER_ACCOUNTS_FILE: cannot read"):
        read_accounts_file(str(tmp_path / "absent.json"))


def test_a_negative_request_budget_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="SPOTLER_MAX_REQUESTS_PER_SECOND"):
        Settings(max_requests_per_second=-1)
    assert "key-nl" not in repr(account_keys(Settings(account="a", api_key="key-nl")))
