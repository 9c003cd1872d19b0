"""The scoring worker: consume → validate → score → retrieve → store → publish → commit.

Delivery guarantees (DESIGN.md, invariant 1):

* Offsets are committed only after every record of the batch is in the store
  and acknowledged by Kafka on ``news.scored`` / ``news.dlq``.
* Store writes are idempotent on the item id (rejections on their topic,
  partition and offset), and each row is an outbox entry flagged ``published``
  once Kafka acknowledged it. A record replayed after a crash is therefore
  never stored twice, and is re-published only when the output topic does not
  already hold it (checked against the topic's tail), so a kill at any point
  leaves no gap and no duplicate.
* Bad input is data: it goes to the dead-letter topic with a reason and the
  stream goes on.
* The serving model changes only between batches: before each batch the worker
  follows the registry's serving pointer (:class:`stream.scorer.ServingWatcher`),
  so a batch polled after a promotion or rollback is scored by the new version,
  and every stored item names the version that scored it.
* Drift detection is advisory: the batch's items are fed to the drift monitor
  after its offsets are committed, and an event is stored and announced on the
  control topic then. A failure there is logged and never fails the batch.
* So are alerts: after the commit the alerter catches up with the store and
  judges the event-time windows that closed (:mod:`stream.alerting`).
* Each item is tagged with its entities (cashtags, the feed's own, the watch
  list) and a topic before it is stored, so both are part of the stored row.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Histogram

from learner.drift import DriftEvent, StreamMonitor
from moodwire.settings import Settings
from moodwire.store import Store, encode_embedding
from retrieval.past_items import PastItems
from stream.alerting import Alerter
from stream.schemas import ControlMessage, Rejection, ScoredItem
from stream.scorer import Scorer, ServingWatcher
from stream.validate import Accepted, Limits, Rejected, validate

log = structlog.get_logger(__name__)

ITEMS = Counter("moodwire_items_scored_total", "Items scored and stored", ["model_version"])
REJECTED = Counter(
    "moodwire_items_rejected_total", "Items sent to the dead-letter topic", ["reason"]
)
DUPLICATES = Counter("moodwire_items_duplicate_total", "Records whose item was already stored")
BATCH_SECONDS = Histogram("moodwire_batch_seconds", "Wall time per batch, by stage", ["stage"])
DRIFT_EVENTS = Counter(
    "moodwire_drift_events_total", "Unsupervised drift events", ["detector", "signal"]
)

_RAW_KEEP = 2000  # characters of a rejected value kept for the operator
_IDLE_ALERTS_S = 5.0  # how often an idle worker still runs the alert rules


@dataclass
class BatchResult:
    records: int = 0
    stored: int = 0
    rejected: int = 0
    duplicates: int = 0
    republished: int = 0
    drift_events: int = 0
    alerts: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def no_drift_monitor() -> StreamMonitor:
    """A monitor with every signal switched off."""
    return StreamMonitor(confidence="off", label_mix="off", embedding="off")


class Worker:
    """One member of the scoring consumer group.

    ``monitor`` watches the scored stream for drift (default: every signal
    off); ``serving`` keeps the scorer on the registry's serving version
    (default: none, the scorer's version serves for good); ``origin`` names
    this worker in drift events (default: ``worker:HOST-PID``);
    ``tag_entities(text, given)`` and ``assign_topics(vectors)`` tag items
    (default: the feed's entities, no topic); ``alerter`` runs the alert rules
    after each batch (default: none).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        scorer: Scorer,
        past: PastItems,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        *,
        monitor: StreamMonitor | None = None,
        serving: ServingWatcher | None = None,
        origin: str | None = None,
        tag_entities: Callable[[str, list[str]], list[str]] | None = None,
        assign_topics: Callable[[np.ndarray], list[str | None]] | None = None,
        alerter: Alerter | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.scorer = scorer
        self.past = past
        self.consumer = consumer
        self.producer = producer
        self.monitor = monitor if monitor is not None else no_drift_monitor()
        self.serving = serving
        self.origin = origin or f"worker:{socket.gethostname()}-{os.getpid()}"
        self.tag_entities = tag_entities or (lambda _text, given: list(given))
        self.assign_topics = assign_topics or (lambda vectors: [None] * len(vectors))
        self.alerter = alerter
        self._alerts_at = 0.0
        self.limits = Limits(
            max_message_bytes=settings.max_message_bytes,
            max_text_chars=settings.max_text_chars,
            max_entities=settings.max_entities,
        )
        self.totals = BatchResult()

    # -- the loop -------------------------------------------------------------------------

    def poll_batch(self) -> list[ConsumerRecord]:
        """Up to ``batch_size`` records, waiting at most ``batch_timeout_ms`` to fill it."""
        deadline = time.monotonic() + self.settings.batch_timeout_ms / 1000.0
        batch: list[ConsumerRecord] = []
        while len(batch) < self.settings.batch_size:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            # Block for the first record; after that, only until the time bound.
            wait_ms = 500 if not batch else remaining_ms
            polled = self.consumer.poll(
                timeout_ms=wait_ms, max_records=self.settings.batch_size - len(batch)
            )
            for records in polled.values():
                batch.extend(records)
            if not polled and (batch or wait_ms == 500):
                break
            if time.monotonic() >= deadline and batch:
                break
        return batch

    def run(
        self, stop: threading.Event, *, on_batch: Callable[[BatchResult], None] | None = None
    ) -> BatchResult:
        """Score until ``stop`` is set; the batch in hand is finished and committed first."""
        log.info(
            "worker_started",
            group=self.settings.consumer_group,
            topic=self.settings.topics.news,
            model_version=self.scorer.version,
            device=str(self.scorer.device),
            index_size=len(self.past),
        )
        while not stop.is_set():
            records = self.poll_batch()
            # Between batches, after the poll: a pointer moved before the poll returned
            # already serves this batch. Idle polls check too, so a swap is loaded early.
            self.follow_serving()
            if not records:
                # Quiet: drift events from the learner still become alerts.
                if time.monotonic() - self._alerts_at >= _IDLE_ALERTS_S:
                    self._mark_partitions([])  # read to the end now, maybe
                    self._watch_alerts()
                continue
            try:
                result = self.process(records)
            except Exception:
                # The one error policy for a batch that cannot be finished (store or broker
                # down, …): stop without committing. Nothing is lost: a restarted worker
                # re-reads the batch, and the store's idempotence absorbs the replay.
                first = records[0]
                log.exception(
                    "batch_failed_stopping",
                    topic=first.topic,
                    partition=first.partition,
                    offset=first.offset,
                    records=len(records),
                )
                raise
            if on_batch is not None:
                on_batch(result)
        log.info(
            "worker_stopped",
            records=self.totals.records,
            stored=self.totals.stored,
            rejected=self.totals.rejected,
            duplicates=self.totals.duplicates,
            drift_events=self.totals.drift_events,
        )
        return self.totals

    def follow_serving(self) -> None:
        """Swap in the registry's serving version if it changed (call between batches only)."""
        if self.serving is None:
            return
        if self.serving.refresh(self.scorer) is not None:
            # Confidence and label mix depend on the model: they start a new normal.
            self.monitor.model_changed()

    # -- one batch ------------------------------------------------------------------------

    def process(self, records: list[ConsumerRecord]) -> BatchResult:
        t0 = time.perf_counter()
        result = BatchResult(records=len(records))
        accepted: list[tuple[ConsumerRecord, Accepted]] = []
        rejections: list[dict[str, Any]] = []
        seen: set[str] = set()
        now = datetime.now(UTC)
        for rec in records:
            outcome = validate(rec.value, kafka_ts_ms=rec.timestamp, limits=self.limits)
            if isinstance(outcome, Rejected):
                rejections.append(self._rejection_row(rec, outcome, now))
                log.warning(
                    "item_rejected",
                    reason=outcome.reason,
                    detail=outcome.detail,
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                )
            elif outcome.id in seen:
                result.duplicates += 1  # the same item twice in one batch: count it once
            else:
                seen.add(outcome.id)
                accepted.append((rec, outcome))

        t1 = time.perf_counter()
        scored_rows: list[dict[str, Any]] = []
        messages: dict[str, bytes] = {}
        probs = vectors = None
        if accepted:
            texts = [a.item.text for _, a in accepted]
            probs, vectors = self.scorer.score(texts)
            t2 = time.perf_counter()
            neighbors = self.past.neighbors(
                vectors, self.settings.neighbors_k, exclude=[a.id for _, a in accepted]
            )
            topics = self.assign_topics(vectors)
            scored_at = datetime.now(UTC)
            for (rec, acc), p, v, nbrs, topic in zip(
                accepted, probs, vectors, neighbors, topics, strict=True
            ):
                label_idx = int(p.argmax())
                item = acc.item
                entities = self.tag_entities(item.text, list(item.entities))
                scored = ScoredItem(
                    id=acc.id,
                    text=item.text,
                    ts=item.ts,
                    source=item.source,
                    entities=entities,
                    topic=topic,
                    meta=dict(item.meta),
                    label=self.scorer.classifier.labels[label_idx],
                    probs={
                        lab: round(float(x), 6)
                        for lab, x in zip(self.scorer.classifier.labels, p, strict=True)
                    },
                    confidence=round(float(p[label_idx]), 6),
                    model_version=self.scorer.version,
                    neighbors=nbrs,
                    scored_at=scored_at,
                )
                messages[acc.id] = scored.model_dump_json().encode("utf-8")
                scored_rows.append(
                    {
                        "id": acc.id,
                        "text": item.text,
                        "ts": item.ts,
                        "source": item.source,
                        "entities": entities,
                        "meta": dict(item.meta),
                        "label": scored.label,
                        "topic": topic,
                        "p_negative": float(p[0]),
                        "p_neutral": float(p[1]),
                        "p_positive": float(p[2]),
                        "confidence": scored.confidence,
                        "model_version": scored.model_version,
                        "neighbors": [n.model_dump() for n in nbrs],
                        "embedding": encode_embedding(v),
                        "src_partition": rec.partition,
                        "src_offset": rec.offset,
                        "kafka_ts": datetime.fromtimestamp(rec.timestamp / 1000.0, tz=UTC)
                        if rec.timestamp is not None and rec.timestamp >= 0
                        else None,
                        "scored_at": scored_at,
                    }
                )
        else:
            t2 = t1
        t3 = time.perf_counter()

        new_ids, replayed, rej_seqs = self.store.write_batch(scored_rows, rejections)
        t4 = time.perf_counter()
        result.duplicates += len(scored_rows) - len(new_ids) - len(replayed)
        if replayed:
            # A previous attempt stored these and may or may not have published them.
            already = find_published(self.consumer.config, self.settings.topics.scored, replayed)
            if already:
                self.store.mark_published(already)
            replayed -= already
            result.republished = len(replayed)
            log.info(
                "replay_repaired",
                stored_before=len(already) + len(replayed),
                republished=len(replayed),
            )
        to_publish = [i for i in messages if i in new_ids or i in replayed]
        for item_id in to_publish:
            self.producer.send(
                self.settings.topics.scored, key=item_id.encode(), value=messages[item_id]
            )
        rej_by_seq = (
            {r["seq"]: r for r in self.store.rejections_by_seq(rej_seqs)} if rej_seqs else {}
        )
        for seq in rej_seqs:
            self.producer.send(self.settings.topics.dlq, value=self._dlq_payload(rej_by_seq[seq]))
        self.producer.flush()
        self.store.mark_published(to_publish, rej_seqs)
        t5 = time.perf_counter()

        self.past.catch_up()
        self._commit(records)
        self._mark_partitions(accepted)
        t6 = time.perf_counter()

        # Only now, with the batch stored, published and committed: drift is advisory and
        # must neither delay delivery nor describe items that a crash could still lose.
        if probs is not None and vectors is not None:
            result.drift_events = self._watch_drift(accepted, probs, vectors)
        t7 = time.perf_counter()
        result.alerts = self._watch_alerts()
        t8 = time.perf_counter()

        result.stored = len(new_ids)
        result.rejected = len(rejections)
        result.timings = {
            "validate": t1 - t0,
            "model": t2 - t1,
            "retrieve": t3 - t2,
            "store": t4 - t3,
            "publish": t5 - t4,
            "commit": t6 - t5,
            "drift": t7 - t6,
            "alerts": t8 - t7,
        }
        for stage, seconds in result.timings.items():
            BATCH_SECONDS.labels(stage).observe(seconds)
        ITEMS.labels(self.scorer.version).inc(result.stored)
        for r in rejections:
            REJECTED.labels(r["reason"]).inc()
        DUPLICATES.inc(result.duplicates)
        for key in (
            "records",
            "stored",
            "rejected",
            "duplicates",
            "republished",
            "drift_events",
            "alerts",
        ):
            setattr(self.totals, key, getattr(self.totals, key) + getattr(result, key))
        log.debug("batch_done", **{k: v for k, v in vars(result).items() if k != "timings"})
        return result

    # -- alerts -------------------------------------------------------------------------

    def _watch_alerts(self) -> int:
        """Run the alert rules over what the store holds now; never fails the batch."""
        if self.alerter is None:
            return 0
        self._alerts_at = time.monotonic()
        try:
            return len(self.alerter.step())
        except Exception:
            log.exception("alerting_failed")
            return 0

    # -- drift --------------------------------------------------------------------------

    def _watch_drift(
        self,
        accepted: list[tuple[ConsumerRecord, Accepted]],
        probs: np.ndarray,
        vectors: np.ndarray,
    ) -> int:
        """Feed the batch to the monitor and emit what fired; never fails the batch."""
        first = self.monitor.seen
        try:
            events = self.monitor.update(probs, vectors)
        except Exception:
            log.exception("drift_monitor_failed", items=len(accepted), position=first)
            return 0
        for event in events:
            i = event.position - first
            rec, acc = accepted[i] if 0 <= i < len(accepted) else (None, None)
            try:
                self._emit_drift(event, rec, acc)
            except Exception:
                log.exception(
                    "drift_emit_failed",
                    detector=event.detector,
                    signal=event.signal,
                    position=event.position,
                )
        return len(events)

    def _emit_drift(
        self, event: DriftEvent, rec: ConsumerRecord | None, acc: Accepted | None
    ) -> None:
        details: dict[str, Any] = {
            "warmup": self.monitor.warmup,
            "cooldown": self.monitor.cooldown,
        }
        if rec is not None and acc is not None:
            # The item at which it fired, so an operator can look at what changed.
            details |= {
                "item_id": acc.id,
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
            }
        DRIFT_EVENTS.labels(event.detector, event.signal).inc()
        log.warning(
            "drift_detected",
            origin=self.origin,
            model_version=self.scorer.version,
            **event.as_row(),
            **details,
        )
        row = {**event.as_row(), "origin": self.origin, "model_version": self.scorer.version}
        try:
            self.store.record_drift({**row, "details": details})
        except Exception:
            log.exception("drift_record_failed", **row)
        # `details` reaches the wire once ControlMessage has such a field (extra keys are
        # ignored until then); the reason carries the essentials either way.
        message = ControlMessage.model_validate(
            {
                "action": "drift",
                "actor": self.origin,
                "version": self.scorer.version,
                "reason": f"{event.detector} on {event.signal} at item {event.position} "
                f"(statistic {event.statistic:g})",
                "details": {**event.as_row(), **details},
            }
        )
        try:
            # Not flushed: the producer sends it within linger_ms; a failure is logged.
            self.producer.send(
                self.settings.topics.control, value=message.model_dump_json().encode("utf-8")
            ).add_errback(
                lambda exc: log.error("drift_announce_failed", **row, error=str(exc)[:200])
            )
        except Exception:
            log.exception("drift_announce_failed", **row)

    # -- helpers --------------------------------------------------------------------------

    def _commit(self, records: list[ConsumerRecord]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            offsets[tp] = max(offsets.get(tp, -1), rec.offset + 1)
        self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})

    def _mark_partitions(self, accepted: list[tuple[ConsumerRecord, Accepted]]) -> None:
        """Tell the alert rules how far in event time each of our partitions is stored.

        Advisory, like drift: a failure is logged and never fails the batch.
        """
        if self.alerter is None:
            return
        newest: dict[tuple[str, int], datetime] = {}
        for rec, acc in accepted:
            key, ts = (rec.topic, rec.partition), acc.item.ts
            if ts is not None and (key not in newest or ts > newest[key]):
                newest[key] = ts
        marks = []
        try:
            for tp in self.consumer.assignment():
                end = self.consumer.highwater(tp)
                caught_up = end is not None and self.consumer.position(tp) >= end
                marks.append(
                    {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "max_ts": newest.get((tp.topic, tp.partition)),
                        "caught_up": caught_up,
                    }
                )
            self.store.mark_partitions(marks)
        except Exception:
            log.exception("partition_marks_failed")

    def _rejection_row(
        self, rec: ConsumerRecord, outcome: Rejected, now: datetime
    ) -> dict[str, Any]:
        raw = rec.value or b""
        return {
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "reason": outcome.reason,
            "detail": outcome.detail,
            "raw": raw[: _RAW_KEEP * 4].decode("utf-8", errors="replace")[:_RAW_KEEP],
            "rejected_at": now,
        }

    @staticmethod
    def _dlq_payload(row: dict[str, Any]) -> bytes:
        rej = Rejection(
            reason=row["reason"],
            detail=row["detail"],
            topic=row["topic"],
            partition=row["partition"],
            offset=row["offset"],
            raw=row["raw"],
            rejected_at=row["rejected_at"]
            if row["rejected_at"].tzinfo
            else row["rejected_at"].replace(tzinfo=UTC),
        )
        return rej.model_dump_json().encode("utf-8")


def find_published(
    consumer_config: dict[str, Any], topic: str, ids: set[str], window: int = 2000
) -> set[str]:
    """Which of ``ids`` are among the last ``window`` messages of each partition of ``topic``.

    Only used to repair a replay after a crash, so it may be slow; it reads
    with a group-less consumer and never commits.
    """
    reader = KafkaConsumer(
        bootstrap_servers=consumer_config["bootstrap_servers"],
        group_id=None,
        enable_auto_commit=False,
        client_id="moodwire-replay-check",
    )
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
        pending = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for tp, recs in reader.poll(timeout_ms=200).items():
                for r in recs:
                    key = r.key.decode("utf-8", errors="replace") if r.key else None
                    if key is None:
                        key = json.loads(r.value).get("id")
                    if key in ids:
                        found.add(key)
                if reader.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if pending:
            raise TimeoutError(f"could not read the tail of {topic} to repair a replay")
    finally:
        reader.close()
    return found
