"""The workers' own timers: the safety-net sweep and retention, as a Celery worker bootstep.

A beat task every two seconds filled Flower with 43,200 empty sweeps a day. Instead, every
worker's main process runs two threads. The sweeper looks for rows due for longer than one
interval (a wake-up was lost, a row came by plain SQL, a retry fell due while no dispatch
ran) and only then sends dispatch tasks, so Flower shows dispatch runs with their counts and
nothing while nothing is due. Retention empties old delivered payloads once an hour. Both take
a turn in dispatch_control first, so however many workers run, one of them acts per turn.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from spotler_outbox.models import claims, control, retention
from spotler_outbox.models.clock import clock_for
from spotler_outbox.models.database import make_engine
from spotler_outbox.models.errors import first_line
from spotler_outbox.models.settings import Settings, get_settings
from spotler_outbox.models.wakeup import send_wakeup
from spotler_outbox.worker.dispatch.gate import AccountGate

log = logging.getLogger("spotler_outbox.sweeper")

RETENTION_CHECK_SECONDS = 60.0


class _Periodic:
    """A daemon thread calling `job` now and then every `interval` seconds until stopped.

    A failing job logs one line when it starts failing and one when it works again, not one
    per tick: a database outage must not flood the log every two seconds.
    """

    def __init__(self, name: str, interval: float, job: Callable[[], object],
                 stop: threading.Event) -> None:
        self.name, self.interval, self.job, self.stop = name, interval, job, stop
        self.failing = False
        self.thread = threading.Thread(target=self._run, name=f"spotler-outbox-{name}",
                                       daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.job()
            except Exception as e:  # a timer that dies would silently stop the safety net
                if not self.failing:
                    log.error("%s failed: %s (%s); trying again every %gs", self.name,
                              type(e).__name__, first_line(e), self.interval)
                self.failing = True
            else:
                if self.failing:
                    log.warning("%s works again", self.name)
                self.failing = False
            self.stop.wait(self.interval)


class Timers:
    """The sweep and retention jobs of one worker process, over an engine of their own."""

    def __init__(self, settings: Settings, send_dispatch: Callable[[], object]) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        # Every worker runs these timers once, in its main process: its clock says when the
        # host's is off the database's.
        self.clock = clock_for(self.engine, log_skew=True)
        # A prefork child inherits this engine's connections: let it drop them unused, so
        # that only this process ever talks on them.
        os.register_at_fork(after_in_child=lambda: self.engine.dispose(close=False))
        self.send_dispatch = send_dispatch
        self.stop = threading.Event()
        self._gate: AccountGate | None = None
        self.threads = [_Periodic("sweep", settings.sweep_interval, self.sweep, self.stop),
                        _Periodic("retention", RETENTION_CHECK_SECONDS, self.retention,
                                  self.stop)]

    def start(self) -> None:
        for periodic in self.threads:
            periodic.thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self.stop.set()
        for periodic in self.threads:
            if periodic.thread.is_alive():
                periodic.thread.join(timeout)
        self.engine.dispose()

    @property
    def gate(self) -> AccountGate:
        """Built on first use: missing credentials stop the sweep (logged), not retention."""
        if self._gate is None:
            self._gate = AccountGate(self.engine, self.settings, self.clock)
        return self._gate

    def sweep(self) -> int:
        """Wake dispatch when a row has been due for a whole interval; returns tasks sent.

        While a 401/403 pauses dispatch, ask verifyAuth instead when its check is due. Either
        way only the worker that takes this interval's turn acts.
        """
        now = self.clock()
        interval = dt.timedelta(seconds=self.settings.sweep_interval)
        with self.engine.begin() as conn:
            # Per account: a paused account's recheck when due, the others' rows wake dispatch.
            states = control.read_controls(conn)
            check_due = any(state.auth_check_due(now) for state in states.values())
            sendable, _, _ = self.gate.sendable(states, now)
            # Due for a whole interval: a row just made due is a running dispatch's to take.
            due = claims.any_due(conn, now - interval, sendable)
            if not (check_due or due):
                return 0
            if not control.take_turn(conn, "sweep", now=now, next_at=now + interval):
                return 0  # another worker's sweeper acts on this turn
        if check_due:
            self.gate.recheck_credentials()  # resumed: the next tick wakes dispatch
        if not due:
            return 0
        for _ in range(self.settings.sweep_fanout):
            self.send_dispatch()
        log.debug("sweep found rows due: %d dispatch tasks sent", self.settings.sweep_fanout)
        return self.settings.sweep_fanout

    def retention(self) -> int:
        """Once per RETENTION_EVERY, by whichever worker takes the turn: empty the payloads of
        orders delivered more than OUTBOX_RETENTION_DAYS ago. Returns orders purged."""
        now = self.clock()
        cutoff = retention.retention_cutoff(now, self.settings.retention_days)
        if cutoff is None:
            return 0
        with self.engine.begin() as conn:
            if not control.take_turn(conn, "retention", now=now,
                                     next_at=now + retention.RETENTION_EVERY):
                return 0
        count = retention.purge_delivered_before(self.engine, before=cutoff, clock=self.clock,
                                                 stop=self.stop)
        if count.rows or count.attempts:
            log.info("retention: emptied %d orders delivered before %s (orderids kept) and "
                     "deleted %d attempts", count.rows, cutoff.isoformat(timespec="seconds"),
                     count.attempts)
        return count.rows


class Sweeper(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """Runs the Timers in the worker's main process, from pool start to worker shutdown."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timers: Timers | None = None

    def start(self, parent: Any) -> None:
        app = parent.app
        self.timers = Timers(get_settings(), lambda: send_wakeup(app))
        self.timers.start()

    def stop(self, parent: Any) -> None:
        if self.timers is not None:
            self.timers.shutdown()
            self.timers = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
