"""Which outbox databases the workers LISTEN on (the rest rely on the sweeper)."""

from __future__ import annotations

import pytest

from spotler_outbox.worker.listen import can_listen


@pytest.mark.parametrize("url, listens", [
    ("postgresql+psycopg://u@h/shop", True),
    ("postgresql+psycopg2://u@h/shop", False),  # LISTEN is done with psycopg 3 only
    ("mysql+pymysql://u@h/shop", False),
    ("sqlite:///outbox.db", False),
])
def test_only_postgresql_through_psycopg_is_listened_on(url: str, listens: bool) -> None:
    assert can_listen(url) is listens
