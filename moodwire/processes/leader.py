"""Which process of many does a single job: the active learner, the active alerter.

The locks (:mod:`state.locks`) live where every process that competes for them
can see them:

* **PostgreSQL** (the store's database, or the shared registry's): a session
  advisory lock — processes on any number of hosts; a holder that dies (SIGKILL
  included) loses it when its connection closes, and a standby takes over at
  its next try (the learner tries every second, an alerter at its next batch or
  idle tick).
* **otherwise** (SQLite, one host): a ``flock`` — the learner's on
  ``REGISTRY/.learner.lock`` as before, the alerter's beside the SQLite file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Gauge

from moodwire.settings import Settings
from state.locks import AdvisoryLock, FileLock, SingleActiveLock

log = structlog.get_logger(__name__)

LEADER = Gauge("moodwire_learner_leader", "1 while this learner is the active one, 0 on standby")


def _postgres(url: str | None) -> bool:
    return bool(url) and url.startswith(("postgresql", "postgres"))


def learner_lock(settings: Settings) -> SingleActiveLock:
    """The active learner's lock: in PostgreSQL when the registry or the store is there
    (learners on several hosts), else ``REGISTRY/.learner.lock``."""
    for url in (settings.resolved_registry_url(), settings.resolved_store_url()):
        if _postgres(url):
            return AdvisoryLock(url, "moodwire:learner")
    return FileLock(settings.resolved_registry() / ".learner.lock")


def alerter_lock(settings: Settings) -> SingleActiveLock | None:
    """The active alerter's lock, per consumer group (None: an in-memory store, one process)."""
    url = settings.resolved_store_url()
    if _postgres(url):
        return AdvisoryLock(url, f"moodwire:alerter:{settings.consumer_group}")
    path = url.split("///", 1)[1] if url.startswith("sqlite") and "///" in url else ""
    if not path or path == ":memory:":
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in settings.consumer_group)
    return FileLock(Path(f"{path}.alerter-{safe}.lock"))


class LearnerRole:
    """``/readyz`` of a learner: ``role`` is ``standby`` until it holds the lock, then
    ``leader`` with its model's details (a standby is ready: it does its job, waiting)."""

    def __init__(self, lock: SingleActiveLock) -> None:
        self.lock = lock
        self.leader: Callable[[], tuple[bool, dict[str, Any]]] | None = None
        LEADER.set(0)

    def lead(self, ready: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        self.leader = ready
        LEADER.set(1)

    def stand_by(self) -> None:
        """Back to standby: the lock was lost."""
        self.leader = None
        LEADER.set(0)

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        if self.leader is None:
            return True, {"role": "standby", "lock": self.lock.name}
        ok, details = self.leader()
        return ok, {"role": "leader", "lock": self.lock.name, **details}


def watch_lock(
    lock: SingleActiveLock, stop: threading.Event, *, every_s: float = 5.0
) -> threading.Event:
    """Check now and then that ``lock`` is still held; when it is not, set ``stop`` (the
    leader's term) and the returned event: a learner that lost its lock (its database
    connection broke, and a standby may hold it now) must stop acting at once."""
    lost = threading.Event()

    def watch() -> None:
        while not stop.wait(every_s):
            if not lock.held():
                log.error("learner_lock_lost", lock=lock.name)
                LEADER.set(0)
                lost.set()
                stop.set()
                return

    threading.Thread(target=watch, name="learner-lock-watch", daemon=True).start()
    return lost
