"""Outages are waited out, not crashed on (DESIGN.md, invariant 3).

Three parts, shared by the worker and the learner:

* :func:`is_outage` — the one decision of what counts as a dependency being
  gone (the broker, the database, the disk) rather than a problem of one
  record: the former is waited out, the latter is dead-lettered.
* :class:`Health` — what a process knows about its dependencies right now:
  up, or down since when and why. It feeds the ``/readyz`` endpoint, the
  ``moodwire_dependency_up`` gauge and one log line per change of state.
* :class:`Waiter` — runs a step until it succeeds or the process is asked to
  stop, backing off exponentially with jitter (tenacity), and sleeping through
  a ``keepalive`` so a Kafka consumer keeps its group membership meanwhile.

>>> import threading, structlog
>>> structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # quiet here
>>> health = Health("example")
>>> calls = []
>>> def flaky():
...     calls.append(1)
...     if len(calls) < 3:
...         raise ConnectionRefusedError("database gone")
...     return "stored"
>>> Waiter(health, threading.Event(), initial_s=0.001, max_s=0.002).run(flaky, "store")
'stored'
>>> len(calls), health.is_up("store")
(3, True)
>>> structlog.reset_defaults()
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from prometheus_client import Counter, Gauge
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_when_event_set,
    wait_exponential_jitter,
)

from stream.errors import Stopping

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEPENDENCY_UP = Gauge(
    "moodwire_dependency_up",
    "1 while a dependency answers, 0 while it is being waited out",
    ["component", "dependency"],
)
OUTAGES = Counter(
    "moodwire_outages_total", "Outages waited out, by dependency", ["component", "dependency"]
)
OUTAGE_SECONDS = Gauge(
    "moodwire_outage_seconds",
    "Seconds the current outage of a dependency has lasted (0 when up)",
    ["component", "dependency"],
)

# OS errors of a disk or a network that come back by themselves (or when an operator
# frees space); anything else from the OS is a bug or a misconfiguration.
_TRANSIENT_ERRNO = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EIO,
    errno.EAGAIN,
    errno.EBUSY,
    errno.ENOMEM,
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EPIPE,
}


_TRANSIENT_MESSAGES = tuple(
    os.strerror(e) for e in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM)
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means a dependency is gone (wait it out), not that the input is bad.

    >>> import sqlalchemy as sa
    >>> is_outage(sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError()))
    True
    >>> is_outage(sa.exc.DataError("INSERT", {}, ValueError("NUL byte")))
    False
    >>> from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
    >>> is_outage(KafkaTimeoutError()), is_outage(MessageSizeTooLargeError())
    (True, False)
    >>> is_outage(RuntimeError("I/O error: No space left on device (os error 28)"))
    True
    """
    import sqlalchemy as sa
    from kafka import errors as kafka_errors

    if isinstance(exc, sa.exc.DBAPIError):
        if getattr(exc, "connection_invalidated", False):
            return True
        # Bad data is the record's own problem; everything else the database says
        # (gone, locked, disk full, read-only, out of connections, …) is waited out.
        return not isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError)
    if isinstance(exc, sa.exc.DisconnectionError | sa.exc.TimeoutError):
        return True
    if isinstance(exc, kafka_errors.KafkaError):
        return not isinstance(exc, RECORD_ERRORS)
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNO
    # Libraries that do their I/O in C or Rust (safetensors, faiss) raise their own
    # error types with the OS's message in the text: "No space left on device (os error 28)".
    text = str(exc)
    return any(message in text for message in _TRANSIENT_MESSAGES)


def _record_errors() -> tuple[type[BaseException], ...]:
    from kafka import errors as kafka_errors

    return (
        kafka_errors.MessageSizeTooLargeError,
        kafka_errors.RecordListTooLargeError,
        kafka_errors.CorruptRecordError,
        kafka_errors.InvalidTimestampError,
    )


# Kafka errors that belong to one record (too large, unreadable): dead-letter it.
RECORD_ERRORS = _record_errors()


@dataclass
class _Down:
    since: float
    since_wall: datetime
    error: str
    attempts: int = 0


class Health:
    """Which dependencies of a process answer; thread-safe.

    ``component`` names the process in metrics ("worker", "learner", …).
    """

    def __init__(self, component: str) -> None:
        self.component = component
        self._lock = threading.Lock()
        self._down: dict[str, _Down] = {}
        self._known: set[str] = set()
        self.beat()

    def beat(self) -> None:
        """The process's loop is alive (for ``/healthz``)."""
        self.last_beat = time.monotonic()

    def down(self, dependency: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        text = text.splitlines()[0][:300] if text else type(error).__name__
        with self._lock:
            self._known.add(dependency)
            state = self._down.get(dependency)
            if state is None:
                state = self._down[dependency] = _Down(time.monotonic(), datetime.now(UTC), text)
                OUTAGES.labels(self.component, dependency).inc()
                DEPENDENCY_UP.labels(self.component, dependency).set(0)
                log.warning(
                    "dependency_down", component=self.component, dependency=dependency, error=text
                )
            state.error, state.attempts = text, state.attempts + 1
            OUTAGE_SECONDS.labels(self.component, dependency).set(time.monotonic() - state.since)

    def up(self, dependency: str) -> float | None:
        """Mark ``dependency`` as answering; the length of the outage that ended, if any."""
        with self._lock:
            self._known.add(dependency)
            state = self._down.pop(dependency, None)
            DEPENDENCY_UP.labels(self.component, dependency).set(1)
            OUTAGE_SECONDS.labels(self.component, dependency).set(0)
        if state is None:
            return None
        seconds = round(time.monotonic() - state.since, 3)
        log.info(
            "dependency_recovered",
            component=self.component,
            dependency=dependency,
            outage_s=seconds,
            attempts=state.attempts,
        )
        return seconds

    def is_up(self, dependency: str) -> bool:
        with self._lock:
            return dependency not in self._down

    def any_down(self) -> bool:
        with self._lock:
            return bool(self._down)

    def snapshot(self) -> dict[str, Any]:
        """``{dependency: {"up": bool, "since": iso, "error": text, "attempts": n}}``."""
        with self._lock:
            out: dict[str, Any] = {d: {"up": True} for d in sorted(self._known)}
            for d, s in self._down.items():
                out[d] = {
                    "up": False,
                    "since": s.since_wall.isoformat(),
                    "down_s": round(time.monotonic() - s.since, 1),
                    "error": s.error,
                    "attempts": s.attempts,
                }
            return out


class Waiter:
    """Retry a step through outages until it succeeds or ``stop`` is set.

    Backoff: exponential from ``initial_s`` to ``max_s`` with jitter. While
    waiting, ``keepalive(seconds)`` does the sleeping (a consumer polls its
    paused partitions so its group does not rebalance); it must return after
    about ``seconds`` or as soon as ``stop`` is set. ``after_outage`` runs once
    when a step succeeds after having failed (resume partitions, check state).
    """

    def __init__(
        self,
        health: Health,
        stop: threading.Event,
        *,
        keepalive: Callable[[float], None] | None = None,
        after_outage: Callable[[str], None] | None = None,
        initial_s: float = 0.5,
        max_s: float = 30.0,
    ) -> None:
        self.health = health
        self.stop = stop
        self.keepalive = keepalive
        self.after_outage = after_outage
        self.initial_s = initial_s
        self.max_s = max_s

    def _sleep(self, seconds: float) -> None:
        self.health.beat()
        if self.keepalive is not None:
            self.keepalive(seconds)
        else:
            self.stop.wait(seconds)
        self.health.beat()

    def run(
        self,
        step: Callable[[], T],
        dependency: str,
        *,
        transient: Callable[[BaseException], bool] = is_outage,
        what: str | None = None,
    ) -> T:
        """``step()``, retried while it raises what ``transient`` accepts.

        Raises :class:`Stopping` when ``stop`` is set during the wait, and any
        non-transient error at once.
        """
        failed = False

        def before_sleep(state: RetryCallState) -> None:
            nonlocal failed
            failed = True
            exc = state.outcome.exception() if state.outcome else None
            self.health.down(dependency, exc or "failed")
            log.warning(
                "retrying_after_outage",
                component=self.health.component,
                dependency=dependency,
                step=what or getattr(step, "__name__", "step"),
                attempt=state.attempt_number,
                wait_s=round(state.upcoming_sleep, 2),
                error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
            )

        retrying = Retrying(
            retry=retry_if_exception(transient),
            wait=wait_exponential_jitter(
                multiplier=self.initial_s, max=self.max_s, jitter=self.initial_s
            ),
            stop=stop_when_event_set(self.stop),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            result = retrying(step)
        except BaseException as exc:
            if self.stop.is_set() and transient(exc):
                raise Stopping(f"stopped while waiting for {dependency}") from exc
            raise
        ended = self.health.up(dependency)
        if (failed or ended is not None) and self.after_outage is not None:
            self.after_outage(dependency)
        return result


class ConsumerKeepalive:
    """Sleep without leaving the consumer group: pause, poll, and give back what came.

    kafka-python drops a member that has not polled for ``max_poll_interval_ms``
    (5 minutes by default), and a rebalance during an outage churns every
    worker of the group. So while a step is waited out, the consumer's
    partitions are paused and it keeps polling; a partition assigned during
    the wait (a rebalance) is paused too, and any record a poll returns anyway
    is given back (the partition is sought back to it), so nothing is skipped.
    :meth:`resume` undoes the pausing once the outage is over.
    """

    def __init__(self, consumer: Any, stop: threading.Event, *, poll_ms: int = 500) -> None:
        self.consumer = consumer
        self.stop = stop
        self.poll_ms = poll_ms
        self._paused: set[Any] = set()

    def __call__(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                self._pause_all()
                polled = self.consumer.poll(timeout_ms=int(min(remaining * 1000, self.poll_ms)))
                for tp, records in polled.items():
                    if records:
                        self.consumer.seek(tp, records[0].offset)
                        self.consumer.pause(tp)
                        self._paused.add(tp)
            except Exception as exc:  # noqa: BLE001 - the broker may be the thing that is down
                log.debug("keepalive_poll_failed", error=str(exc)[:200])
                self.stop.wait(min(max(remaining, 0), self.poll_ms / 1000))

    def _pause_all(self) -> None:
        assigned = set(self.consumer.assignment())
        new = assigned - self._paused
        if new:
            self.consumer.pause(*new)
            self._paused |= new

    @property
    def paused(self) -> bool:
        return bool(self._paused)

    def resume(self) -> None:
        if not self._paused:
            return
        try:
            assigned = set(self.consumer.assignment())
            mine = [tp for tp in self._paused if tp in assigned]
            if mine:
                self.consumer.resume(*mine)
        finally:
            self._paused.clear()
