"""The core loop, split by I/O role: claim (loop), send and split (batch), decide (pure),
write the decision (settle), and the backoff policy. Plain functions: Celery only wakes them."""

from spotler_outbox.worker.dispatch.context import DispatchReport
from spotler_outbox.worker.dispatch.loop import Dispatcher

__all__ = ["DispatchReport", "Dispatcher"]
