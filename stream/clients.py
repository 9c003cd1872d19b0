"""Kafka clients configured from the settings, in one place."""

from __future__ import annotations

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer

from moodwire.settings import Settings

log = structlog.get_logger(__name__)


class _LogRebalance(ConsumerRebalanceListener):
    # Offsets are committed after every batch, before the next poll, so a
    # rebalance never loses processed work; it only needs to be visible.
    def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
        log.info(
            "partitions_revoked", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in revoked)
        )

    def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
        log.info(
            "partitions_assigned",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )


def make_producer(settings: Settings, *, client_id: str = "moodwire") -> KafkaProducer:
    # acks=all + idempotence: a retried send is not written twice by the broker. A send
    # that the broker has not acknowledged within delivery_timeout_ms fails (and is
    # retried by stream.publish, which checks the topic first); send() itself waits at
    # most max_block_ms for the topic's metadata, so an outage shows within seconds.
    return KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=client_id,
        acks="all",
        linger_ms=5,
        max_request_size=max(1 << 20, settings.max_message_bytes * 4),
        request_timeout_ms=10_000,
        delivery_timeout_ms=30_000,
        max_block_ms=10_000,
        # Back within seconds of a broker's return (the default backoff grows to 30 s).
        reconnect_backoff_max_ms=5_000,
    )


def make_reader(settings: Settings, *, client_id: str = "moodwire-reader") -> KafkaConsumer:
    """A group-less consumer that never commits: for reading a topic's tail."""
    return KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=15_000,
        max_partition_fetch_bytes=max(1 << 20, settings.max_message_bytes * 4),
    )


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None, client_id: str = "moodwire"
) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_records=settings.batch_size,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        reconnect_backoff_max_ms=5_000,
        # Oversized items must reach the worker to be dead-lettered, not stall the fetcher.
        max_partition_fetch_bytes=max(1 << 20, settings.max_message_bytes * 4),
    )
    if topics:
        consumer.subscribe(list(topics), listener=_LogRebalance() if group_id else None)
    return consumer
