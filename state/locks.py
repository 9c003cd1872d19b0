"""Locks that let one process of many do a job: the active learner, the active alerter.

Two kinds, one small protocol (``try_acquire() -> bool``, ``held() -> bool``,
``release()``), both freed by the operating system or the database when their
holder dies, SIGKILL included:

* :class:`FileLock` — an exclusive ``flock`` on a file: processes of one host
  (the embedded SQLite set-up, where everything shares one disk).
* :class:`AdvisoryLock` — a PostgreSQL session advisory lock
  (``pg_try_advisory_lock``) on a connection of its own, held for the holder's
  life: processes on any number of hosts that share the database. A holder
  that dies closes its connection and the server frees the lock at once; a host
  that vanishes without closing it is noticed by the server's TCP keepalives,
  which the lock's session sets to seconds (``tcp_keepalives_*``), not the
  operating system's two hours. :meth:`AdvisoryLock.held` asks the server, so a
  holder whose connection broke learns that it no longer holds the lock.

:func:`lock_for` picks the kind from the store's URL.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "job.lock"
>>> a, b = FileLock(path), FileLock(path)
>>> a.try_acquire(), b.try_acquire()
(True, False)
>>> a.release(); b.try_acquire(), b.held()
(True, True)
>>> b.release()
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
import structlog

from state.store.schema import make_engine

log = structlog.get_logger(__name__)


class SingleActiveLock(Protocol):
    """Held by one process at a time; freed when its holder dies."""

    name: str

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never blocks); whether this process holds it now."""

    def held(self) -> bool:
        """Whether this process still holds it (for a database lock: asks the database)."""

    def release(self) -> None:
        """Let it go (a no-op when not held)."""


def wait_acquire(
    lock: SingleActiveLock,
    stop: threading.Event,
    *,
    poll_s: float = 1.0,
    on_wait=None,
    beat=None,
) -> bool:
    """Block until ``lock`` is taken (True) or ``stop`` is set (False).

    ``on_wait()`` is called once, when the lock is found taken by another process;
    ``beat()`` at every try (a standby's liveness: it is alive while it waits).
    """
    waited = False
    said_at = -1e9
    while not stop.is_set():
        if beat is not None:
            beat()
        try:
            if lock.try_acquire():
                return True
        except sa.exc.OperationalError as exc:  # the database is down: keep waiting
            now = time.monotonic()
            if now - said_at >= 30.0:  # one line per 30 s of outage, not one per try
                said_at = now
                log.warning(
                    "lock_unavailable", lock=lock.name, error=str(exc).splitlines()[0][:200]
                )
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        stop.wait(poll_s)
    return False


class FileLock:
    """An exclusive ``flock`` on ``path``; the kernel frees it when its holder dies."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious operator
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        return f"FileLock({self.name!r})"


def advisory_key(name: str) -> int:
    """The signed 64-bit key PostgreSQL's advisory locks take, from a lock's name.

    >>> advisory_key("moodwire:learner:workers") == advisory_key("moodwire:learner:workers")
    True
    >>> -(2**63) <= advisory_key("x") < 2**63
    True
    """
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# Per-session server settings: a holder whose host vanished (no FIN, no RST) is dropped,
# and its lock freed, after about idle + interval * count seconds.
_KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}


class AdvisoryLock:
    """A PostgreSQL session advisory lock named ``name``, on a connection of its own."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.key = advisory_key(name)
        self._engine: sa.Engine | None = None
        self._conn: sa.Connection | None = None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            if self.held():
                return True
            self._drop()
        if self._engine is None:
            # No pool: the lock lives and dies with exactly this one connection.
            url = make_engine(self.url).url  # the store's spelling of the URL (driver and all)
            self._engine = sa.create_engine(
                url,
                poolclass=sa.pool.NullPool,
                isolation_level="AUTOCOMMIT",
                connect_args={"connect_timeout": 10},
            )
        conn = self._engine.connect()
        try:
            for setting, value in _KEEPALIVE.items():
                conn.execute(sa.text(f"SET {setting} = {int(value)}"))
            got = bool(
                conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
            )
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        """Asks the server (a session lock lasts as long as its session); False if the link
        broke, and the lock is then to be taken again, by whoever comes first."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError as exc:
            log.warning(
                "lock_connection_lost", lock=self.name, error=str(exc).splitlines()[0][:200]
            )
            self._drop()
            return False

    def release(self) -> None:
        if self._conn is None:
            return
        # A connection already gone took the lock with it.
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"AdvisoryLock({self.name!r})"


def lock_for(store_url: str, name: str, local_dir: str | os.PathLike[str]) -> SingleActiveLock:
    """An advisory lock in the store's PostgreSQL database, else a file lock in ``local_dir``.

    >>> import tempfile
    >>> lock_for("sqlite:///x.db", "moodwire:learner:g", tempfile.mkdtemp())  # doctest: +ELLIPSIS
    FileLock('.../moodwire-learner-g.lock')
    >>> lock_for("postgresql://db/moodwire", "moodwire:learner:g", "/unused")
    AdvisoryLock('moodwire:learner:g')
    """
    if store_url.startswith(("postgresql", "postgres")):
        return AdvisoryLock(store_url, name)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return FileLock(Path(local_dir) / f"{safe}.lock")
