"""The worker's and learner's Prometheus series beyond counting: what serves, how far behind,
how long items take, how big the index is, how retrains go; and the log context of a batch.

Series (all on ``/metrics`` of the process, see :mod:`stream.health`):

* ``moodwire_serving_model_info{model_version}`` — 1 for the version serving now;
* ``moodwire_consumer_lag{topic,partition}`` — records between the consumer's
  position and the end of each assigned partition (refreshed at most every
  ``lag_every_s``, from the high watermark the fetches report, else the end offset);
* ``moodwire_produce_to_stored_seconds`` — Kafka record timestamp to the store's
  commit, one observation per newly stored item;
* ``moodwire_seconds_since_last_batch`` — computed at scrape time;
* ``moodwire_index_items`` — items in the FAISS index, at scrape time;
* ``moodwire_retrain_seconds`` and ``moodwire_retrain_outcomes_total{outcome}``
  (``promoted``, ``rejected``, ``awaiting_approval``, ``abandoned``, ``failed``).

>>> from prometheus_client import REGISTRY
>>> meter = WorkerMetrics(consumer=None, index_size=lambda: 3)
>>> meter.serving("v7")
>>> REGISTRY.get_sample_value("moodwire_serving_model_info", {"model_version": "v7"})
1.0
>>> REGISTRY.get_sample_value("moodwire_index_items")
3.0
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

log = structlog.get_logger(__name__)

SERVING = Gauge(
    "moodwire_serving_model_info", "The model version that scores now (1)", ["model_version"]
)
LAG = Gauge(
    "moodwire_consumer_lag",
    "Records between the consumer's position and the end of the partition",
    ["topic", "partition"],
)
PRODUCE_TO_STORED = Histogram(
    "moodwire_produce_to_stored_seconds",
    "Kafka record timestamp to the store's commit, per newly stored item",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
SINCE_BATCH = Gauge("moodwire_seconds_since_last_batch", "Seconds since the last committed batch")
INDEX_SIZE = Gauge("moodwire_index_items", "Items in the FAISS index of past items")
RETRAIN_SECONDS = Histogram(
    "moodwire_retrain_seconds",
    "Wall time of one retrain: training, gates, writing the version, the decision",
    buckets=(1, 5, 15, 30, 60, 120, 180, 300, 600, 1200, 3600),
)
RETRAIN_OUTCOMES = Counter(
    "moodwire_retrain_outcomes_total",
    "Retrains by how they ended (promoted, rejected, awaiting_approval, abandoned, failed)",
    ["outcome"],
)


class WorkerMetrics:
    """Keeps the worker's gauges: call it at the points of the batch it names."""

    def __init__(
        self,
        consumer: Any,
        index_size: Callable[[], int],
        *,
        lag_every_s: float = 5.0,
    ) -> None:
        self.consumer = consumer
        self.lag_every_s = lag_every_s
        self._version: str | None = None
        self._last_batch = time.time()  # before any batch: since the start
        self._lag_at = 0.0
        self._lag_labels: set[tuple[str, str]] = set()
        SINCE_BATCH.set_function(lambda: time.time() - self._last_batch)
        INDEX_SIZE.set_function(lambda: float(index_size()))

    def serving(self, version: str) -> None:
        """The version now serving (the previous one's series is removed)."""
        if version == self._version:
            return
        if self._version is not None:
            with contextlib.suppress(KeyError):
                SERVING.remove(self._version)
        SERVING.labels(version).set(1)
        self._version = version

    def stored(self, kafka_ts_ms: list[int | None]) -> None:
        """Newly stored items' Kafka timestamps (ms), observed against now (the commit)."""
        now = time.time()
        for ms in kafka_ts_ms:
            if ms is not None and ms > 0:
                PRODUCE_TO_STORED.observe(max(0.0, now - ms / 1000.0))

    def committed(self) -> None:
        self._last_batch = time.time()
        self.lag()

    def lag(self, *, force: bool = False) -> None:
        """Refresh the lag per assigned partition (at most every ``lag_every_s``)."""
        now = time.monotonic()
        if self.consumer is None or (not force and now - self._lag_at < self.lag_every_s):
            return
        self._lag_at = now
        try:
            assigned = list(self.consumer.assignment())
            ends: dict[Any, int | None] = {tp: self.consumer.highwater(tp) for tp in assigned}
            unknown = [tp for tp, end in ends.items() if end is None]
            if unknown:  # no fetch answered yet: ask the broker
                ends.update(self.consumer.end_offsets(unknown))
            labels = set()
            for tp in assigned:
                end = ends.get(tp)
                if end is None:
                    continue
                key = (tp.topic, str(tp.partition))
                LAG.labels(*key).set(max(0, end - self.consumer.position(tp)))
                labels.add(key)
            for key in self._lag_labels - labels:  # partitions handed to another worker
                with contextlib.suppress(KeyError):
                    LAG.remove(*key)
            self._lag_labels = labels
        except Exception as exc:  # noqa: BLE001 - a metric never fails the worker
            log.debug("lag_unavailable", error=f"{type(exc).__name__}: {str(exc)[:200]}")


def observe_retrain(seconds: float, outcome: str) -> None:
    """One retrain's duration and how it ended."""
    RETRAIN_SECONDS.observe(seconds)
    RETRAIN_OUTCOMES.labels(outcome).inc()


def batch_fields(origin: str, records: list[Any], model_version: str) -> dict[str, Any]:
    """What every log line of a batch carries: the worker, partitions, offsets, the version.

    >>> from types import SimpleNamespace as R
    >>> batch_fields("w1", [R(topic="news", partition=1, offset=5),
    ...                     R(topic="news", partition=1, offset=9)], "v2")
    {'worker': 'w1', 'partitions': ['news:1'], 'offsets': {'news:1': [5, 9]}, 'model_version': 'v2'}
    """
    ranges: dict[str, list[int]] = {}
    for rec in records:
        key = f"{rec.topic}:{rec.partition}"
        lo, hi = ranges.get(key, [rec.offset, rec.offset])
        ranges[key] = [min(lo, rec.offset), max(hi, rec.offset)]
    return {
        "worker": origin,
        "partitions": sorted(ranges),
        "offsets": dict(sorted(ranges.items())),
        "model_version": model_version,
    }


@contextlib.contextmanager
def batch_context(origin: str, records: list[Any], model_version: str) -> Iterator[None]:
    """Bind :func:`batch_fields` to every log line (structlog's and stdlib's) in the block."""
    with structlog.contextvars.bound_contextvars(**batch_fields(origin, records, model_version)):
        yield
