"""spotler-outbox: every confirmed purchase reaches Spotler Activate, once.

The order system's API: call `enqueue_purchase` in the transaction that confirms the order
(`spotler_outbox.asyncio`, `.django` and `.dbapi` for the other stacks; one insert behind all).
The workers run as `celery -A spotler_outbox.worker worker`; operators use `spotler-outbox`.
"""

from spotler_outbox.models.enqueue import EnqueueResult, enqueue_purchase
from spotler_outbox.models.errors import ConfigurationError, InvalidEvent, OutboxError
from spotler_outbox.models.version import installed_version

__version__ = installed_version()
__all__ = [
    "ConfigurationError",
    "EnqueueResult",
    "InvalidEvent",
    "OutboxError",
    "__version__",
    "enqueue_purchase",
]
