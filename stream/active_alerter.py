"""One worker of the group runs the alert rules; the others stand by and take over.

Every worker used to run an :class:`~stream.alerting.Alerter` after each batch,
each reading every stored item: alerting work grew with the number of workers,
and only the deterministic alert ids kept each alert from being raised more
than once. :class:`ActiveAlerter` runs it in one worker at a time, the holder
of a lock (:mod:`state.locks`: a PostgreSQL advisory lock in the store for
workers on several hosts, a file lock beside a SQLite store on one host).

Why one active alerter rather than rules partitioned by key: the rules need
whole counts (stream-wide and per-topic rules see every item, the per-entity
baseline uses the stream's negative share, the watermark spans every source
partition), so each partition of the rules would still read every item; one
reader does the reading once. Its cost is one alerter's, whatever the number
of workers, and it is small beside scoring (it reads rows, the workers run the
model).

Nothing is lost at a handover: the alert state lives in the store, not in the
alerter. A worker that takes the lock builds a fresh alerter, which rebuilds
the windows any alert could still involve from the stored items (as a
restarted worker does), and the alert ids are deterministic, so an episode the
old holder raised is updated, not raised again (``upsert_alert`` stores each
revision once, and only the storer announces it). Each step checks the lock is
still held (for an advisory lock, one round trip on its own connection); a
holder that lost it stops alerting at once.

>>> import tempfile, pathlib
>>> from structlog.testing import capture_logs
>>> from state.locks import FileLock
>>> class Rules:
...     def step(self):
...         return ["an alert"]
>>> path = pathlib.Path(tempfile.mkdtemp()) / "alerter.lock"
>>> a = ActiveAlerter(Rules, FileLock(path), retry_s=0)
>>> b = ActiveAlerter(Rules, FileLock(path), retry_s=0)
>>> with capture_logs() as events:
...     first = a.step(), b.step(), a.active, b.active
...     a.close()
...     second = b.step(), b.active
>>> first, second
((['an alert'], [], True, False), (['an alert'], True))
>>> [e["event"] for e in events]
['alerter_active', 'alerter_released', 'alerter_active']
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from prometheus_client import Gauge

from state.locks import SingleActiveLock

log = structlog.get_logger(__name__)

ALERTER_ACTIVE = Gauge(
    "moodwire_alerter_active", "1 while this worker runs the alert rules for the group"
)


class AlertRules(Protocol):
    def step(self) -> list[dict[str, Any]]: ...


class ActiveAlerter:
    """Runs ``make()``'s alert rules while this process holds ``lock``; idle otherwise."""

    def __init__(
        self,
        make: Callable[[], AlertRules],
        lock: SingleActiveLock,
        *,
        retry_s: float = 2.0,
    ) -> None:
        self.make = make
        self.lock = lock
        self.retry_s = retry_s
        self.rules: AlertRules | None = None
        self._next_try = 0.0

    @property
    def active(self) -> bool:
        return self.rules is not None

    def step(self) -> list[dict[str, Any]]:
        """The alert rules' step if this worker is the active alerter, else nothing."""
        if self.rules is None:
            if time.monotonic() < self._next_try:
                return []
            self._next_try = time.monotonic() + self.retry_s
            if not self.lock.try_acquire():
                return []
            try:
                # Built on taking over: its windows come from the store as they are now.
                self.rules = self.make()
            except BaseException:
                self.lock.release()
                raise
            ALERTER_ACTIVE.set(1)
            log.info("alerter_active", lock=self.lock.name)
        elif not self.lock.held():
            self.rules = None
            ALERTER_ACTIVE.set(0)
            log.warning("alerter_lock_lost", lock=self.lock.name)
            return []
        return self.rules.step()

    def close(self) -> None:
        """Hand the rules over (another worker takes them at its next step)."""
        if self.rules is not None:
            log.info("alerter_released", lock=self.lock.name)
        self.rules = None
        ALERTER_ACTIVE.set(0)
        self.lock.release()
