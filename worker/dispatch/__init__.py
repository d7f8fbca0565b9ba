"""The core loop, split by I/O role: claim and pipeline (loop), send and split (batch), decide
(pure), the decision as a settlement value (settle), which accounts may send (gate), and the
backoff policy. Every transaction is the store's (models.ledger). Celery only wakes them."""

from spotler_outbox.worker.dispatch.loop import Dispatcher
from spotler_outbox.worker.dispatch.report import DispatchReport

__all__ = ["DispatchReport", "Dispatcher"]
