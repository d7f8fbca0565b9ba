"""The worker's clients per account follow the accounts file, and survive a broken edit."""

from __future__ import annotations

import json
import os
from pathlib import Path

from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.spotler.accounts import AccountClients


def write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))  # a distinct stamp even within the filesystem's resolution


def test_clients_follow_the_file_and_a_broken_edit_keeps_the_accounts_read_before(
    tmp_path: Path,
) -> None:
    path = tmp_path / "accounts.json"
    write(path, "{not json", 1_000)
    settings = Settings(api_url="https://api.example.com", account="shop-nl", api_key="k-nl",
                        accounts_file=str(path))
    clients = AccountClients(settings)
    assert clients.accounts == ["", "shop-nl"]  # the single pair works on its own
    write(path, json.dumps({"shop-be": "k-be"}), 2_000)
    clients.refresh()
    assert clients.accounts == ["", "shop-be", "shop-nl"]
    be = clients.client_for("shop-be")
    assert be is not None and be.session.headers["X-AUTH-ACCOUNT"] == "shop-be"
    write(path, '{"shop-be": ', 3_000)
    clients.refresh()
    assert clients.accounts == ["", "shop-be", "shop-nl"] and clients.client_for("shop-be") is be
    write(path, json.dumps({"shop-be": "k-be-2"}), 4_000)
    clients.refresh()
    rotated = clients.client_for("shop-be")
    assert rotated is not be and rotated is not None
    assert rotated.session.headers["X-AUTH-APIKEY"] == "k-be-2"
    assert clients.client_for("shop-de") is None
