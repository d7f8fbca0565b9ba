"""Settings of the test shop: its database is the test database, on PostgreSQL ("default")
and on MariaDB ("mariadb"), where `spotler-outbox migrate` put the outbox tables."""

from __future__ import annotations

import pymysql
from psycopg import IsolationLevel
from sqlalchemy.engine import make_url

from tests.conftest import SERVER_URLS, TEST_DB

# Django's MySQL backend wants mysqlclient, a C extension; PyMySQL stands in for it (its
# advertised version raised to the one Django checks for).
pymysql.version_info = (2, 2, 1, "final", 0)
pymysql.install_as_MySQLdb()


def _database(url: str, engine: str) -> dict[str, object]:
    parsed = make_url(url)
    # The test database by name, as server_url() picks it: a URL's own name would be shared
    # by the suite's processes.
    return {"ENGINE": engine, "NAME": TEST_DB, "USER": parsed.username or "",
            "PASSWORD": parsed.password or "", "HOST": parsed.host or "",
            "PORT": str(parsed.port or ""),
            **({"OPTIONS": {"charset": "utf8mb4"}} if "mysql" in engine else {})}


SECRET_KEY = "test-shop-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "tests.django_shop.urls"
INSTALLED_APPS = ["tests.django_shop"]
MIDDLEWARE: list[str] = []
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": _database(SERVER_URLS["postgresql"], "django.db.backends.postgresql"),
    "mariadb": _database(SERVER_URLS["mariadb"], "django.db.backends.mysql"),
    # The same database, as a shop running its transactions at REPEATABLE READ has it.
    "repeatable_read": {
        **_database(SERVER_URLS["postgresql"], "django.db.backends.postgresql"),
        "OPTIONS": {"isolation_level": IsolationLevel.REPEATABLE_READ},
    },
    "mariadb_repeatable_read": {
        **_database(SERVER_URLS["mariadb"], "django.db.backends.mysql"),
        "OPTIONS": {"charset": "utf8mb4", "isolation_level": "repeatable read"},
    },
}
