"""A database URL's password is masked in its field only: never by replacing its text
wherever it occurs, which garbled messages (password `y` turned "MySQL" into "M***SQL")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from spotler_outbox.models.database import shown_url
from spotler_outbox.models.settings import reset_settings
from spotler_outbox.worker.console.cli import main
from tests.conftest import server_url
from tests.services import free_port


@pytest.fixture
def outbox_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    yield monkeypatch
    reset_settings()


def status_error(monkeypatch: pytest.MonkeyPatch, url: str,
                 capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", url)
    reset_settings()
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    return err


def test_a_one_letter_password_is_masked_without_touching_the_driver_message(
    outbox_url: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # MariaDB's driver names the server "MySQL"; nothing listens on this port.
    url = f"mysql+pymysql://outbox:y@127.0.0.1:{free_port()}/mysql_outbox"

    err = status_error(outbox_url, url, capsys)

    assert "cannot use the database at mysql+pymysql://outbox:***@127.0.0.1:" in err
    assert "/mysql_outbox: (2003, \"Can't connect to MySQL server on '127.0.0.1'" in err
    assert "***SQL" not in err


def test_a_refused_password_is_masked_and_the_servers_answer_kept_whole(
    outbox_url: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real MariaDB refusing a wrong password, which is also a word of its answer.
    url = make_url(server_url("mariadb")).set(username="root", password="YES")

    err = status_error(outbox_url, url.render_as_string(hide_password=False), capsys)

    assert "mysql+pymysql://root:***@127.0.0.1:3306/" in err
    assert "Access denied for user 'root'" in err and "(using password: YES)" in err


@pytest.mark.parametrize(("url", "shown"), [
    ("mysql+pymysql://outbox:y@db/mysql", "mysql+pymysql://outbox:***@db/mysql"),
    ("postgresql+psycopg://postgres:postgres@postgres:5432/postgres",
     "postgresql+psycopg://postgres:***@postgres:5432/postgres"),
    ("postgresql+psycopg://outbox@db/outbox", "postgresql+psycopg://outbox@db/outbox"),
    ("sqlite:///y.db", "sqlite:///y.db"),
])
def test_shown_url_masks_the_password_field_only(url: str, shown: str) -> None:
    assert shown_url(url) == shown
