"""How the worker feeds its drift monitor and emits events, and when it follows the registry.

Fast: a real SQLite store and the real Worker, with small doubles for the
model, the index and the Kafka clients (the real ones are in
tests/integration/test_worker_drift_and_swap.py).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from doubles import Consumer, NoNeighbours, Producer, TextScorer, item_value, record
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from learner.drift import DriftEvent, StreamMonitor
from moodwire.settings import Settings, Topics
from state.store import Store
from stream.schemas import ControlMessage
from stream.scorer import ModelSwap
from stream.worker import Worker

DIM = 8


class ScriptedMonitor(StreamMonitor):
    """The real monitor's interface; fires on the items whose number is in ``fire_on``."""

    def __init__(self, fire_on: Collection[int] = (), fail: bool = False) -> None:
        super().__init__(confidence="off", label_mix="off", embedding="off", warmup=7, cooldown=9)
        self.fire_on = fire_on
        self.fail = fail
        self.fed: list[float] = []
        self.model_changes = 0

    def update(self, probs: np.ndarray, vectors: np.ndarray) -> list[DriftEvent]:
        if self.fail:
            raise RuntimeError("detector bug")
        events = []
        for v in vectors:
            self.fed.append(float(v[0]))
            if int(v[0]) in self.fire_on:
                events.append(DriftEvent("embedding_shift", "embedding", 7.5, 100, self.seen))
            self.seen += 1
        return events

    def model_changed(self) -> None:
        self.model_changes += 1


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, topics=Topics())


def _worker(settings: Settings, monitor: StreamMonitor | None = None, **kw: Any) -> Worker:
    return Worker(
        settings.worker(),
        Store(settings.resolved_store_url()),
        TextScorer(),  # type: ignore[arg-type]
        NoNeighbours(),  # type: ignore[arg-type]
        Consumer(),  # type: ignore[arg-type]
        Producer(),  # type: ignore[arg-type]
        monitor=monitor,
        origin="worker:test-1",
        **kw,
    )


def _drift_count(detector: str, signal: str) -> float:
    value = REGISTRY.get_sample_value(
        "moodwire_drift_events_total", {"detector": detector, "signal": signal}
    )
    return value or 0.0


def test_accepted_items_feed_the_monitor_in_record_order(settings: Settings) -> None:
    monitor = ScriptedMonitor()
    worker = _worker(settings, monitor)
    records = [
        record(0, item_value(5)),
        record(1, b"{not json"),  # rejected
        record(2, item_value(3)),
        record(3, item_value(5)),  # the same item again in this batch
        record(4, item_value(9)),
    ]
    result = worker.process(records)
    assert result.stored == 3 and result.rejected == 1
    assert monitor.fed == [5.0, 3.0, 9.0] and monitor.seen == 3
    worker.process([record(5, item_value(1))])
    assert monitor.fed == [5.0, 3.0, 9.0, 1.0]


def test_a_drift_event_is_stored_announced_and_counted_after_the_batch_is_safe(
    settings: Settings,
) -> None:
    monitor = ScriptedMonitor(fire_on={12})
    worker = _worker(settings, monitor)
    worker.process([record(i, item_value(i)) for i in range(10)])
    at_event: dict[str, Any] = {}
    real_record = worker.store.record_drift

    def record_drift(event: dict[str, Any]) -> int:
        # What is already durable when the event is written.
        at_event["stored"] = worker.store.count_items()
        at_event["commits"] = len(worker.consumer.commits)  # type: ignore[attr-defined]
        at_event["published"] = len(worker.producer.on(settings.topics.scored))  # type: ignore[attr-defined]
        return real_record(event)

    worker.store.record_drift = record_drift  # type: ignore[method-assign]
    before = _drift_count("embedding_shift", "embedding")
    with capture_logs() as logs:
        result = worker.process([record(i, item_value(i), partition=1) for i in range(10, 15)])

    assert result.drift_events == 1 and worker.totals.drift_events == 1
    assert at_event == {"stored": 15, "commits": 2, "published": 15}
    (row,) = worker.store.drift_event_rows()
    assert row["detector"] == "embedding_shift" and row["signal"] == "embedding"
    assert row["position"] == 12 and row["statistic"] == 7.5 and row["window"] == 100
    assert row["origin"] == "worker:test-1" and row["model_version"] == "v1"
    assert row["details"] == {
        "item_id": "item-12",
        # The item's own time (here the record's: the item gave none): where the shift is.
        "item_ts": "2023-11-14T22:13:20.012000+00:00",
        "topic": "news",
        "partition": 1,
        "offset": 12,
        "warmup": 7,
        "cooldown": 9,
    }
    (raw,) = worker.producer.on(settings.topics.control)  # type: ignore[attr-defined]
    msg = ControlMessage.model_validate_json(raw)
    assert msg.action == "drift" and msg.actor == "worker:test-1" and msg.version == "v1"
    assert msg.reason is not None and msg.reason.startswith("embedding_shift on embedding")
    assert "12" in msg.reason
    assert _drift_count("embedding_shift", "embedding") == before + 1
    (logged,) = [e for e in logs if e["event"] == "drift_detected"]
    assert logged["item_id"] == "item-12" and logged["model_version"] == "v1"


def test_failing_to_record_an_event_never_fails_the_batch(settings: Settings) -> None:
    worker = _worker(settings, ScriptedMonitor(fire_on={1}))

    def broken(_event: dict[str, Any]) -> int:
        raise OSError("store went away")

    worker.store.record_drift = broken  # type: ignore[method-assign]
    with capture_logs() as logs:
        result = worker.process([record(i, item_value(i)) for i in range(3)])
    assert result.stored == 3 and result.drift_events == 1
    assert len(worker.consumer.commits) == 1  # type: ignore[attr-defined]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["drift_record_failed"]
    # The announcement does not depend on the store.
    assert len(worker.producer.on(settings.topics.control)) == 1  # type: ignore[attr-defined]


def test_a_failing_detector_never_fails_the_batch(settings: Settings) -> None:
    worker = _worker(settings, ScriptedMonitor(fail=True))
    with capture_logs() as logs:
        result = worker.process([record(i, item_value(i)) for i in range(3)])
    assert result.stored == 3 and result.drift_events == 0
    assert len(worker.consumer.commits) == 1  # type: ignore[attr-defined]
    assert any(e["event"] == "drift_monitor_failed" for e in logs)


def test_with_every_detector_off_a_shifted_stream_raises_nothing(settings: Settings) -> None:
    worker = _worker(settings)  # the default: a monitor with every signal off
    assert (worker.monitor.confidence, worker.monitor.label_mix, worker.monitor.embedding) == (
        "off",
        "off",
        "off",
    )
    for start in range(0, 1200, 100):  # the item numbers, and so the vectors, jump at 600
        shift = 1000 if start >= 600 else 0
        worker.process([record(i, item_value(i + shift)) for i in range(start, start + 100)])
    assert worker.totals.drift_events == 0 and worker.store.drift_event_rows() == []
    assert worker.producer.on(settings.topics.control) == []  # type: ignore[attr-defined]


class FakeWatcher:
    def __init__(self, swaps: list[ModelSwap | None]) -> None:
        self.swaps = swaps

    def refresh(self, scorer: Any) -> ModelSwap | None:
        swap = self.swaps.pop(0)
        if swap is not None:
            scorer.version = swap.version
        return swap


def test_a_model_swap_restarts_the_model_dependent_detectors(settings: Settings) -> None:
    monitor = ScriptedMonitor()
    watcher = FakeWatcher([None, ModelSwap("v1", "v2", 0.1, False), None])
    worker = _worker(settings, monitor, serving=watcher)
    for _ in range(3):
        worker.follow_serving()
    assert monitor.model_changes == 1 and worker.scorer.version == "v2"
    # Without a watcher the worker keeps its scorer (existing callers, benchmarks).
    _worker(settings).follow_serving()
