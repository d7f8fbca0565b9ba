"""Wake the workers after an enqueue commits, without ever slowing or failing the order.

The message only says "there is work"; the row is the record of truth, and the beat sweeper
finds every due row even when this message is lost or the broker is down.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

DISPATCH_TASK = "spotler_outbox.dispatch"
# A wake-up older than this is worthless: the sweeper will have run since.
WAKEUP_EXPIRES_SECONDS = 60
# After a send, commits within this window share the next message: a busy shop sends a few
# dozen messages a second, not one per order (each costs the order thread GIL time).
COALESCE_SECONDS = 0.03

log = logging.getLogger("spotler_outbox.wakeup")


class _Waker:
    """One background thread per process; a burst of commits becomes one broker message."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.pending = threading.Event()
        self.pid = os.getpid()
        self.sent = 0
        self.failed = 0
        self._app: Any = None
        self._thread = threading.Thread(target=self._run, name="spotler-outbox-wakeup",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.pending.wait()
            self.pending.clear()
            try:
                self._send()
            except Exception as e:  # the order must not notice a broker outage
                self.failed += 1
                log.warning("wake-up not sent (%s: %s); the sweeper will pick the order up",
                            type(e).__name__, e)
            else:
                self.sent += 1
            time.sleep(COALESCE_SECONDS)

    def _send(self) -> None:
        if self._app is None:
            from celery import Celery  # a Celery app is costly: built on first use only

            self._app = Celery("spotler_outbox_producer", broker=self.broker_url,
                               set_as_current=False)
            self._app.conf.broker_connection_timeout = 2
            if self.broker_url.startswith(("redis://", "rediss://")):
                # A broker that is down must cost this thread seconds, not minutes.
                self._app.conf.broker_transport_options = {"socket_connect_timeout": 2,
                                                           "socket_timeout": 2}
        self._app.send_task(DISPATCH_TASK, expires=WAKEUP_EXPIRES_SECONDS, retry=False,
                            ignore_result=True)


_wakers: dict[str, _Waker] = {}
_lock = threading.Lock()


def request_dispatch(broker_url: str) -> None:
    """Ask for a dispatch soon; returns at once."""
    waker = _wakers.get(broker_url)
    if waker is None or waker.pid != os.getpid():  # a forked child needs its own thread
        with _lock:
            waker = _wakers.get(broker_url)
            if waker is None or waker.pid != os.getpid():
                waker = _wakers[broker_url] = _Waker(broker_url)
    waker.pending.set()
