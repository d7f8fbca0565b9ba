"""The outbox tables, the SQL on them, and the order system's enqueue API."""

from models.enqueue import EnqueueResult, enqueue_purchase
from models.errors import InvalidEvent, OutboxError
from models.tables import DeliveryAttempt, OutboxEvent, Status

__all__ = [
    "DeliveryAttempt",
    "EnqueueResult",
    "InvalidEvent",
    "OutboxError",
    "OutboxEvent",
    "Status",
    "enqueue_purchase",
]
