"""Checked sends: a record counts as published only once Kafka acknowledged it.

kafka-python's ``send()`` returns a future and ``flush()`` does not raise when
records fail, so an unchecked producer reports failed sends as done.
:class:`Publisher` sends a set of messages, waits for every future, and
retries the ones that failed until each is acknowledged (outages are waited
out by a :class:`~stream.outage.Waiter`) or fails for a reason of its own
(too large for the broker: returned as *undeliverable*, for the caller to
dead-letter). A failed attempt may still have reached the broker (a lost
acknowledgement), so before sending again the publisher asks the topic which
of the keys it already holds, and sends only the others: nothing twice.
A producer left in a broken state (its producer id unknown to a restarted
broker, say) is replaced by a fresh one from the factory.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from prometheus_client import Counter

from stream.outage import RECORD_ERRORS, Waiter, is_outage

log = structlog.get_logger(__name__)

SENDS = Counter(
    "moodwire_sends_total", "Records sent to Kafka, by topic kind and outcome", ["outcome"]
)


@dataclass(frozen=True)
class Outgoing:
    """One record to publish; ``ref`` is what the caller calls it (an item id, a row seq)."""

    topic: str
    key: bytes | None
    value: bytes
    ref: Hashable


@dataclass
class Delivery:
    """What became of a set of messages."""

    acked: set[Hashable] = field(default_factory=set)  # acknowledged by the broker
    found: set[Hashable] = field(default_factory=set)  # already on the topic (not sent again)
    undeliverable: dict[Hashable, str] = field(default_factory=dict)  # the record's own fault
    attempts: int = 0

    @property
    def published(self) -> set[Hashable]:
        return self.acked | self.found


class SendFailed(Exception):
    """Some records of an attempt were not acknowledged (the first error is the cause)."""


class Publisher:
    """Sends records and knows which the broker acknowledged.

    ``make_producer()`` builds a producer (again, after one broke);
    ``on_topic(topic, keys)`` returns which of ``keys`` the topic already holds
    (default: :func:`keys_on_topic` with ``make_reader``).
    """

    def __init__(
        self,
        make_producer: Callable[[], KafkaProducer],
        *,
        make_reader: Callable[[], KafkaConsumer] | None = None,
        on_topic: Callable[[str, set[str]], set[str]] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self._make_producer = make_producer
        self.producer = make_producer()
        self._stale = False  # the producer failed a send: use a new one for the next attempt
        self.timeout_s = timeout_s
        if on_topic is None and make_reader is not None:

            def on_topic(topic: str, keys: set[str]) -> set[str]:
                return keys_on_topic(make_reader, topic, keys)

        self.on_topic = on_topic

    # -- one attempt ----------------------------------------------------------------------

    def send(self, messages: Iterable[Outgoing]) -> tuple[set[Hashable], dict[Hashable, Exception]]:
        """Send once and wait: ``(acknowledged refs, {ref: error})``."""
        futures = []
        failed: dict[Hashable, Exception] = {}
        blocked: Exception | None = None
        for m in messages:
            if blocked is not None:
                # send() waited max_block_ms for the topic's metadata and gave up: so would
                # every other send now (an outage): fail the rest at once, try again later.
                failed[m.ref] = blocked
                continue
            try:
                futures.append((m, self.producer.send(m.topic, key=m.key, value=m.value)))
            except kafka_errors.KafkaError as exc:  # send() fails synchronously too
                failed[m.ref] = exc
                if isinstance(exc, kafka_errors.KafkaTimeoutError):
                    blocked = exc
        if futures:
            try:
                self.producer.flush(timeout=self.timeout_s)
            except kafka_errors.KafkaTimeoutError as exc:
                for m, f in futures:
                    if not f.is_done:
                        failed.setdefault(m.ref, exc)
        acked: set[Hashable] = set()
        for m, f in futures:
            if m.ref in failed:
                continue
            if f.succeeded():
                acked.add(m.ref)
            else:
                failed[m.ref] = f.exception or kafka_errors.KafkaTimeoutError("no acknowledgement")
        SENDS.labels("acked").inc(len(acked))
        SENDS.labels("failed").inc(len(failed))
        return acked, failed

    # -- until delivered ------------------------------------------------------------------

    def deliver(self, messages: list[Outgoing], waiter: Waiter) -> Delivery:
        """Every message acknowledged (or undeliverable), retrying through outages.

        Raises :class:`~stream.outage.Stopping` when asked to stop meanwhile;
        what was acknowledged so far is then lost to the caller, which must
        not commit (a replay repairs it).
        """
        delivery = Delivery()
        pending = {m.ref: m for m in messages}
        unsure = False  # an earlier attempt failed: the broker may hold some of them

        def attempt() -> None:
            nonlocal unsure
            delivery.attempts += 1
            if self._stale:
                self.reset_producer()
            if unsure and self.on_topic is not None:
                self._drop_found(pending, delivery)
            if not pending:
                return
            acked, failed = self.send(list(pending.values()))
            delivery.acked |= acked
            for ref in acked:
                pending.pop(ref, None)
            for ref, exc in failed.items():
                if isinstance(exc, RECORD_ERRORS):
                    delivery.undeliverable[ref] = f"{type(exc).__name__}: {exc}"[:500]
                    pending.pop(ref, None)
            if pending:
                unsure = True
                # An idempotent kafka-python producer whose send expired or ran out of
                # retries never sends again (and one that outlived a broker restart has
                # an unknown producer id): the next attempt uses a new one.
                self._stale = True
                first = next(iter(failed[ref] for ref in pending if ref in failed), None)
                raise SendFailed(f"{len(pending)} record(s) not acknowledged: {first}") from first

        waiter.run(
            attempt,
            "kafka",
            transient=lambda e: isinstance(e, SendFailed) or is_outage(e),
            what="publish",
        )
        return delivery

    def _drop_found(self, pending: dict[Hashable, Outgoing], delivery: Delivery) -> None:
        by_topic: dict[str, dict[str, Hashable]] = {}
        for ref, m in pending.items():
            if m.key is not None:
                by_topic.setdefault(m.topic, {})[m.key.decode("utf-8", "replace")] = ref
        for topic, keys in by_topic.items():
            assert self.on_topic is not None
            for key in self.on_topic(topic, set(keys)):
                ref = keys[key]
                delivery.found.add(ref)
                pending.pop(ref, None)
        if delivery.found:
            log.info("sends_found_on_topic", n=len(delivery.found))

    def reset_producer(self) -> None:
        """Close the producer (without waiting on a dead broker) and build a new one.

        Building one needs the broker: if that fails, the error is raised (an
        outage, for the caller's waiter) and the next attempt tries again.
        """
        old = self.producer
        with contextlib.suppress(Exception):  # it is being replaced because it failed
            old.close(timeout=1)
        self.producer = self._make_producer()
        self._stale = False
        log.info("producer_replaced")

    def send_nowait(self, topic: str, key: bytes | None, value: bytes, what: str) -> None:
        """Fire and forget, with the failure logged (advisory messages: drift, alerts)."""
        try:
            self.producer.send(topic, key=key, value=value).add_errback(
                lambda exc: log.error(f"{what}_send_failed", topic=topic, error=str(exc)[:200])
            )
        except Exception as exc:  # noqa: BLE001 - advisory: never fails the caller
            log.error(f"{what}_send_failed", topic=topic, error=str(exc)[:200])

    def close(self) -> None:
        try:
            self.producer.close(timeout=5)
        except Exception:  # noqa: BLE001
            log.warning("producer_close_failed")


def keys_on_topic(
    make_reader: Callable[[], KafkaConsumer], topic: str, keys: set[str], window: int = 2000
) -> set[str]:
    """Which of ``keys`` are among the last ``window`` records of each partition of ``topic``.

    A record is matched by its key, or by the ``id`` in its JSON value when it
    has none. Used only to repair a failed or replayed send, so it may be slow;
    it reads with a group-less consumer and never commits. A partition is read
    to its high watermark as the fetches report it (a broker's list-offsets
    answer can lag behind it: Tansu's counts batches, not records), so what was
    just written is always seen.
    """
    reader = make_reader()
    found: set[str] = set()
    try:
        partitions = reader.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return found
        reader.assign(tps)
        ends = reader.end_offsets(tps)
        for tp in tps:
            reader.seek(tp, max(0, ends[tp] - window))
        pending = set(tps)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for recs in reader.poll(timeout_ms=200).values():
                for r in recs:
                    key = r.key.decode("utf-8", errors="replace") if r.key else _json_id(r.value)
                    if key in keys:
                        found.add(key)
            for tp in list(pending):
                high = reader.highwater(tp)
                if high is not None and reader.position(tp) >= max(high, ends[tp]):
                    pending.discard(tp)
        if pending:
            raise kafka_errors.KafkaTimeoutError(f"could not read the tail of {topic}")
    finally:
        reader.close()
    return found


def _json_id(value: bytes | None) -> str | None:
    try:
        obj: Any = json.loads(value) if value else None
    except ValueError:
        return None
    return obj.get("id") if isinstance(obj, dict) else None
