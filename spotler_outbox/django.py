"""Enqueue from Django, in the order's own `transaction.atomic()` on Django's connection.

    from django.db import transaction
    from spotler_outbox.django import enqueue_purchase

    with transaction.atomic():
        order = Order.objects.create(...)
        enqueue_purchase({"event": "Purchase", "orderid": str(order.pk), ...})

The outbox tables live in the database Django's `using` alias points at (created there by
`spotler-outbox migrate`). PostgreSQL and MySQL/MariaDB backends; SQLite too, for tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from spotler_outbox.dbapi import Enqueued, enqueue_with_cursor
from spotler_outbox.models import wakeup
from spotler_outbox.models.enqueue import outbox_values
from spotler_outbox.models.errors import ConfigurationError, UsageError
from spotler_outbox.models.settings import Settings, get_settings

__all__ = ["Enqueued", "enqueue_purchase"]

_VENDORS = {"postgresql": "postgresql", "mysql": "mysql", "sqlite": "sqlite"}


def enqueue_purchase(
    event: Mapping[str, Any], using: str = "default", *, account: str | None = None,
    settings: Settings | None = None,
) -> Enqueued:
    """Validate `event`, insert its outbox row in the current `transaction.atomic()` block,
    and wake the workers once that transaction commits.

    Raises InvalidEvent (naming every bad field) before touching the database, and UsageError
    outside `transaction.atomic()`: in autocommit the row would commit without the order.
    """
    from django.db import connections, transaction  # Django is the caller's, not ours

    settings = settings or get_settings()
    values = outbox_values(event, settings, account)
    connection = connections[using]
    if not connection.in_atomic_block:
        raise UsageError(
            "spotler_outbox.django.enqueue_purchase must run inside transaction.atomic"
            f"(using={using!r}), with the order's own writes; outside it the outbox row would "
            "commit on its own")
    dialect = _VENDORS.get(connection.vendor)
    if dialect is None:
        raise ConfigurationError(f"spotler_outbox.django: the {connection.vendor!r} database "
                                 "backend is not supported; use PostgreSQL or MySQL/MariaDB")
    with connection.cursor() as cursor:
        result = enqueue_with_cursor(cursor, dialect, values)
    if result.created and settings.wakeup_enabled:
        transaction.on_commit(partial(wakeup.request_dispatch, settings.broker_url),
                              using=using)
    return result
