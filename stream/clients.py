"""Kafka clients configured from one :class:`~stream.config.KafkaConfig`, in one place."""

from __future__ import annotations

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer

from stream.config import KafkaConfig

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


def make_producer(kafka: KafkaConfig, *, client_id: str = "moodwire") -> KafkaProducer:
    # acks=all + idempotence: a retried send is not written twice by the broker. A send
    # that the broker has not acknowledged within delivery_timeout_ms fails (and is
    # retried by stream.publish, which checks the topic first); send() itself waits at
    # most max_block_ms for the topic's metadata, so an outage shows within seconds.
    return KafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=client_id,
        acks="all",
        linger_ms=5,
        max_request_size=kafka.max_fetch_bytes,
        request_timeout_ms=10_000,
        delivery_timeout_ms=30_000,
        max_block_ms=10_000,
        # Back within seconds of a broker's return (the default backoff grows to 30 s).
        reconnect_backoff_max_ms=5_000,
    )


def make_reader(kafka: KafkaConfig, *, client_id: str = "moodwire-reader") -> KafkaConsumer:
    """A group-less consumer that never commits: for reading a topic's tail."""
    return KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=15_000,
        max_partition_fetch_bytes=kafka.max_fetch_bytes,
    )


def make_consumer(
    kafka: KafkaConfig, *topics: str, group_id: str | None, client_id: str = "moodwire"
) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_records=kafka.max_poll_records,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        reconnect_backoff_max_ms=5_000,
        max_partition_fetch_bytes=kafka.max_fetch_bytes,
    )
    if topics:
        consumer.subscribe(list(topics), listener=_LogRebalance() if group_id else None)
    return consumer
