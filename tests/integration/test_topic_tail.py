"""Reading a topic's tail (the replay repair and the resend check) sees every record, on a
broker whose list-offsets answer lags behind (Tansu's counts batches, not records)."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, KafkaProducer

from stream.clients import ensure_topics
from stream.publish import keys_on_topic

pytestmark = pytest.mark.integration


def test_keys_on_topic_finds_every_key_written_in_large_batches(broker: str, unique: str) -> None:
    topic = f"tail-{unique}"
    ensure_topics(broker, [topic, f"{topic}-empty"], 4)
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=50)
    for i in range(3000):
        producer.send(topic, key=f"k{i}".encode(), value=b"{}")
    producer.flush()
    producer.close()
    wanted = {f"k{i}" for i in range(0, 3000, 7)}

    def reader() -> KafkaConsumer:
        return KafkaConsumer(bootstrap_servers=broker)

    assert keys_on_topic(reader, topic, wanted | {"never-sent"}) == wanted
    assert keys_on_topic(reader, f"{topic}-empty", wanted) == set()
