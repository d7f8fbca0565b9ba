"""Enqueue from Django, in the order's own `transaction.atomic()` on Django's connection.

    from django.db import transaction
    from spotler_outbox.django import enqueue_purchase

    with transaction.atomic():
        order = Order.objects.create(...)
        enqueue_purchase({"event": "Purchase", "orderid": order.pk, ...})

The outbox tables live in the database Django's `using` alias points at (created there by
`spotler-outbox migrate`). PostgreSQL and MySQL/MariaDB backends; SQLite too, for tests. The
insert is the one every entry point runs (models.enqueue's core), on the driver's connection
under Django's, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

from spotler_outbox.dbapi import dbapi_target, plain_target
from spotler_outbox.models import wakeup
from spotler_outbox.models.enqueue import EnqueueResult, Target, insert_row, outbox_values
from spotler_outbox.models.errors import ConfigurationError, UsageError
from spotler_outbox.models.settings import ProducerSettings, get_producer_settings

__all__ = ["EnqueueResult", "Enqueued", "enqueue_purchase"]

Enqueued = EnqueueResult  # the name this module's result had before there was one type
_VENDORS = ("postgresql", "mysql", "sqlite")


def enqueue_purchase(
    event: Mapping[str, Any], using: str = "default", *, account: str | None = None,
    settings: ProducerSettings | None = None,
) -> EnqueueResult:
    """Validate `event`, insert its outbox row in the current `transaction.atomic()` block,
    and wake the workers once that transaction commits.

    Raises InvalidEvent (naming every bad field) before touching the database, and UsageError
    outside `transaction.atomic()`: in autocommit the row would commit without the order.
    """
    from django.db import connections, transaction  # Django is the caller's, not ours

    settings = settings or get_producer_settings()
    values = outbox_values(event, settings, account)
    connection = connections[using]
    if not connection.in_atomic_block:
        raise UsageError(
            "spotler_outbox.django.enqueue_purchase must run inside transaction.atomic"
            f"(using={using!r}), with the order's own writes; outside it the outbox row would "
            "commit on its own")
    if connection.vendor not in _VENDORS:
        raise ConfigurationError(f"spotler_outbox.django: the {connection.vendor!r} database "
                                 "backend is not supported; use PostgreSQL or MySQL/MariaDB")
    connection.ensure_connection()
    result = insert_row(dbapi_target(connection.connection,
                                     outside=partial(_another_connection, using)), values)
    if result.created and settings.wakeup_enabled:
        transaction.on_commit(partial(wakeup.request_dispatch, settings.broker_url),
                              using=using)
    return result


@contextmanager
def _another_connection(using: str) -> Iterator[Target]:
    """A connection of Django's own to the same database, outside the order's transaction."""
    from django.db import connections

    other = connections.create_connection(using)
    try:
        other.ensure_connection()
        yield plain_target(other.connection)
    finally:
        other.close()
