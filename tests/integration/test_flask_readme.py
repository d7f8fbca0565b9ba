"""The README's Flask-SQLAlchemy example, run as printed against PostgreSQL and MariaDB."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from spotler_outbox.models.database import make_engine
from spotler_outbox.models.settings import reset_settings
from tests.conftest import empty_database
from tests.integration.fixtures import statuses

pytest.importorskip("flask_sqlalchemy")

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_flask_example() -> str:
    text = README.read_text()
    found = re.search(r"<!-- flask-example -->\n```python\n(.*?)```", text, re.DOTALL)
    assert found, "the README lost its Flask-SQLAlchemy example"
    return found.group(1)


@pytest.fixture(params=("postgresql", "mariadb"))
def shop_app(request: pytest.FixtureRequest, tmp_root: Path,
             monkeypatch: pytest.MonkeyPatch) -> Any:
    url = empty_database(request.param, tmp_root)
    monkeypatch.setenv("OUTBOX_WAKEUP", "false")
    reset_settings()
    namespace: dict[str, Any] = {"__name__": "readme_shop", "SHOP_DATABASE_URL": url}
    exec(compile(readme_flask_example(), str(README), "exec"), namespace)
    app, db = namespace["app"], namespace["db"]
    with app.app_context():
        db.drop_all()
        db.create_all()
    yield app, url
    with app.app_context():
        db.drop_all()
        db.engine.dispose()


def test_the_readme_flask_example_commits_the_order_and_its_outbox_row_together(
    shop_app: Any,
) -> None:
    app, url = shop_app
    client = app.test_client()
    answer = client.post("/checkout", json={"email": "jane@example.com",
                                            "products": [{"id": "SKU-1", "quantity": 1}]})
    assert answer.status_code == 201
    orderid = str(answer.get_json()["order"])
    refused = client.post("/checkout", json={"email": "jane@example.com",
                                             "products": [{"id": "SKU-1", "quantity": 0}]})
    assert refused.status_code == 500  # InvalidEvent: the request fails, nothing commits
    engine = make_engine(url)
    assert statuses(engine) == {orderid: "pending"}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM flask_orders")).scalar() == 1
    engine.dispose()
