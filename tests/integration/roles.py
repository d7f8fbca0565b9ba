"""Run `spotler-outbox grants` as printed, and hand out URLs that log in as its users."""

from __future__ import annotations

import contextlib
import io
import os
import re

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from spotler_outbox.worker.console.cli import main
from tests.conftest import TEST_DB

_PASSWORD = re.compile(r"""(?:ROLE "(\w+)" LOGIN PASSWORD|"""
                       r"""USER IF NOT EXISTS '(\w+)'@'[^']*' IDENTIFIED BY) '([^']+)'""")
_granted: dict[str, dict[str, str]] = {}


def role_names() -> dict[str, str]:
    # Users are server-wide: names of this test run's own, so parallel runs never collide.
    return {role: f"{TEST_DB}_{role}" for role in ("producer", "worker", "operator")}


def printed_grants(admin_url: str) -> str:
    names = role_names()
    argv = ["grants", *(f"--{role}={name}" for role, name in names.items())]
    out = io.StringIO()
    saved = os.environ.get("OUTBOX_DATABASE_URL")
    os.environ["OUTBOX_DATABASE_URL"] = admin_url
    try:
        from spotler_outbox.models.settings import reset_settings

        reset_settings()
        with contextlib.redirect_stdout(out):
            assert main(argv) == 0
    finally:
        if saved is None:
            os.environ.pop("OUTBOX_DATABASE_URL", None)
        else:
            os.environ["OUTBOX_DATABASE_URL"] = saved
        reset_settings()
    return out.getvalue()


def role_urls(admin_url: str) -> dict[str, str]:
    """Create the three users with the printed SQL (once per database) and return their URLs."""
    if admin_url in _granted:
        return _granted[admin_url]
    script = printed_grants(admin_url)
    admin = sa.create_engine(admin_url)
    raw = admin.raw_connection()  # the driver's own cursor: the text goes out as printed
    try:
        cursor = raw.cursor()
        for name in role_names().values():
            # Start from nothing: a user left by an earlier run keeps its old password
            # (MariaDB) and its old privileges (both).
            if admin.dialect.name == "postgresql":
                cursor.execute(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                               f"'{name}') THEN EXECUTE 'DROP OWNED BY \"{name}\"'; END IF; END $$")
            else:
                cursor.execute(f"DROP USER IF EXISTS '{name}'@'%'")
        for line in script.splitlines():
            if line and not line.startswith("--"):
                cursor.execute(line)
        raw.commit()
    finally:
        raw.close()
        admin.dispose()
    passwords = {}
    for match in _PASSWORD.finditer(script):
        passwords[match.group(1) or match.group(2)] = match.group(3)
    url = make_url(admin_url)
    urls = {role: url.set(username=name, password=passwords[name])
            .render_as_string(hide_password=False) for role, name in role_names().items()}
    _granted[admin_url] = urls
    return urls
