"""The worker's gauges on a consumer double: lag per partition, removed when handed on."""

from __future__ import annotations

import time

from kafka import TopicPartition
from prometheus_client import REGISTRY

from stream.observability import WorkerMetrics


class _Consumer:
    def __init__(self) -> None:
        self.parts = {TopicPartition("t-obs", 0): (10, 4), TopicPartition("t-obs", 1): (None, 0)}

    def assignment(self) -> set[TopicPartition]:
        return set(self.parts)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.parts[tp][0]

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 3 for tp in tps}

    def position(self, tp: TopicPartition) -> int:
        return self.parts[tp][1]


def _lag(partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "moodwire_consumer_lag", {"topic": "t-obs", "partition": str(partition)}
    )


def test_lag_per_partition_from_the_high_watermark_or_the_end_offset() -> None:
    consumer = _Consumer()
    meter = WorkerMetrics(consumer, lambda: 42, lag_every_s=60)
    meter.lag(force=True)
    assert _lag(0) == 6 and _lag(1) == 3  # 10 - 4; no fetch yet on 1: its end offset
    consumer.parts = {TopicPartition("t-obs", 0): (10, 10)}
    meter.lag()  # throttled: nothing changes
    assert _lag(0) == 6
    meter.lag(force=True)
    assert _lag(0) == 0 and _lag(1) is None  # partition 1 went to another worker
    assert REGISTRY.get_sample_value("moodwire_index_items") == 42
    meter.committed()
    assert REGISTRY.get_sample_value("moodwire_seconds_since_last_batch") < 1


def test_latency_is_observed_per_stored_item_and_the_serving_version_is_one_series() -> None:
    meter = WorkerMetrics(None, lambda: 0)
    before = REGISTRY.get_sample_value("moodwire_produce_to_stored_seconds_count") or 0
    meter.stored([int(time.time() * 1000) - 1500, None, -1, int(time.time() * 1000)])
    assert REGISTRY.get_sample_value("moodwire_produce_to_stored_seconds_count") == before + 2
    meter.serving("va")
    meter.serving("vb")
    info = "moodwire_serving_model_info"
    assert REGISTRY.get_sample_value(info, {"model_version": "vb"}) == 1
    assert REGISTRY.get_sample_value(info, {"model_version": "va"}) is None
