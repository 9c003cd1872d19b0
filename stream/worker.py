"""The scoring worker: consume → validate → score → retrieve → store → publish → commit.

Delivery guarantees (DESIGN.md, invariants 1–3):

* **Nothing lost.** Offsets are committed only after every record of the batch
  is in the store and Kafka acknowledged its publication on ``news.scored`` /
  ``news.dlq``; every send is checked (:class:`stream.publish.Publisher`), a
  failed one is retried, and a row is flagged published only once the broker
  acknowledged that very record.
* **Nothing twice.** Store writes are idempotent on the item id (rejections on
  their topic, partition and offset), and each row is an outbox entry flagged
  ``published`` once acknowledged. A record replayed after a crash is never
  stored twice, and is re-published only when the output topic does not
  already hold it (checked against the topic's tail); a send retried after an
  unclear failure is checked the same way.
* **Nothing a message holds stops the stream.** Each record is isolated: one
  that fails validation, scoring, storing or publishing for a reason of its
  own goes to the dead-letter topic with the reason and its raw bytes, and the
  rest of its batch goes on. A batch write that fails is bisected to find the
  poison row; a probe write (rolled back) tells a bad row from a bad store.
* **Outages are waited out.** Broker gone, database unreachable, disk full:
  the step is retried with backoff (:class:`stream.outage.Waiter`) while the
  consumer's partitions are paused and it keeps polling, so the group does
  not churn; logs, metrics and ``/readyz`` say so; the worker resumes by
  itself. A commit refused because the group rebalanced meanwhile is not an
  error: the partition's new owner re-reads the batch and idempotence absorbs
  it. A broker that comes back empty (the embedded one keeps nothing) has no
  committed offsets for the group: it re-forms and each partition is read from
  its start (``auto_offset_reset=earliest``); what was stored before is
  absorbed as duplicates.
* The serving model changes only between batches: before each batch the worker
  follows the registry's serving pointer (:class:`stream.scorer.ServingWatcher`),
  so a batch polled after a promotion or rollback is scored by the new version,
  and every stored item names the version that scored it.
* Drift detection and alerts are advisory: they run after the commit, and a
  failure there is logged and never fails the batch.
* Each item is tagged with its entities (cashtags, the feed's own, the watch
  list) and a topic before it is stored, so both are part of the stored row.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge, Histogram

from learner.drift import DriftEvent, StreamMonitor
from retrieval.neighbors import Neighbor
from retrieval.past_items import PastItems
from state.store import Store, encode_embedding
from stream.alerting import Alerter
from stream.config import WorkerConfig
from stream.deadletter import dlq_message, rejection_row
from stream.masking import Masker
from stream.observability import WorkerMetrics, batch_context
from stream.outage import ConsumerKeepalive, Health, Stopping, Waiter, is_outage
from stream.publish import Outgoing, Publisher
from stream.schemas import ControlMessage, ScoredItem
from stream.scorer import Scorer, ServingWatcher
from stream.validate import Accepted, Rejected, kafka_time, validate

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
BATCH_FAILURES = Counter(
    "moodwire_batch_failures_total", "Batches retried after an unexpected error"
)
LAST_BATCH = Gauge("moodwire_last_batch_timestamp_seconds", "When the last batch was committed")

_IDLE_ALERTS_S = 5.0  # how often an idle worker still runs the alert rules
_CANARY = "Company reports quarterly results in line with expectations"
# Commit errors that mean the group moved on without us: the batch is the new owner's.
COMMIT_LOST = (
    kafka_errors.CommitFailedError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.RebalanceInProgressError,
    kafka_errors.IllegalStateError,
)


class ModelUnhealthy(RuntimeError):
    """The serving model fails on plain text: no item is to blame (waited out)."""


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


@dataclass
class _Batch:
    """One batch on its way through the stages."""

    records: list[ConsumerRecord]
    now: datetime
    accepted: list[tuple[ConsumerRecord, Accepted]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)  # rows of `rejected`
    probs: np.ndarray | None = None
    vectors: np.ndarray | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # rows of `items`
    messages: dict[str, bytes] = field(default_factory=dict)  # id -> news.scored value
    raw_by_id: dict[str, ConsumerRecord] = field(default_factory=dict)
    new_ids: set[str] = field(default_factory=set)
    seqs: dict[str, int] = field(default_factory=dict)  # id -> store seq, of items written now
    replayed: set[str] = field(default_factory=set)  # stored by an earlier attempt, unpublished
    rej_seqs: list[int] = field(default_factory=list)
    unstored: list[dict[str, Any]] = field(default_factory=list)  # dead letters the store refused
    result: BatchResult = field(default_factory=BatchResult)
    mask: Masker | None = None  # personal data masked: no original in a dead letter or log

    def letter(self, rec: ConsumerRecord, reason: str, detail: str) -> dict[str, Any]:
        """The dead letter of ``rec`` (masked when personal data is)."""
        return rejection_row(
            rec.topic,
            rec.partition,
            rec.offset,
            rec.value,
            reason,
            detail,
            self.now,
            mask=self.mask,
        )

    def reject(self, rec: ConsumerRecord, reason: str, detail: str) -> None:
        letter = self.letter(rec, reason, detail)
        self.rejections.append(letter)
        detail = letter["detail"]
        log.warning(
            "item_rejected",
            reason=reason,
            detail=detail[:300],
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
        )


def no_drift_monitor() -> StreamMonitor:
    """A monitor with every signal switched off."""
    return StreamMonitor(confidence="off", label_mix="off", embedding="off")


def scored_item(
    acc: Accepted,
    probs: np.ndarray,
    labels: tuple[str, ...],
    *,
    version: str,
    entities: list[str],
    topic: str | None,
    neighbors: list[Neighbor],
    scored_at: datetime,
) -> ScoredItem:
    """What the worker publishes for one accepted item."""
    label_idx = int(probs.argmax())
    item = acc.item
    return ScoredItem(
        id=acc.id,
        text=item.text,
        ts=item.ts,
        source=item.source,
        entities=entities,
        topic=topic,
        meta=dict(item.meta),
        label=labels[label_idx],
        probs={lab: round(float(x), 6) for lab, x in zip(labels, probs, strict=True)},
        confidence=round(float(probs[label_idx]), 6),
        model_version=version,
        neighbors=neighbors,
        scored_at=scored_at,
    )


def item_row(
    scored: ScoredItem,
    probs: np.ndarray,
    vector: np.ndarray,
    *,
    partition: int | None = None,
    offset: int | None = None,
    kafka_ts: datetime | None = None,
) -> dict[str, Any]:
    """The store's ``items`` row of a scored item (the one item→row mapping)."""
    return {
        "id": scored.id,
        "text": scored.text,
        "ts": scored.ts,
        "source": scored.source,
        "entities": list(scored.entities),
        "meta": dict(scored.meta),
        "label": scored.label,
        "topic": scored.topic,
        "p_negative": float(probs[0]),
        "p_neutral": float(probs[1]),
        "p_positive": float(probs[2]),
        "confidence": scored.confidence,
        "model_version": scored.model_version,
        "neighbors": [n.model_dump() for n in scored.neighbors],
        "embedding": encode_embedding(vector),
        "src_partition": partition,
        "src_offset": offset,
        "kafka_ts": kafka_ts,
        "scored_at": scored.scored_at,
    }


class Worker:
    """One member of the scoring consumer group.

    ``monitor`` watches the scored stream for drift (default: every signal
    off); ``serving`` keeps the scorer on the registry's serving version
    (default: none, the scorer's version serves for good); ``origin`` names
    this worker in drift events (default: ``worker:HOST-PID``);
    ``tag_entities(text, given)`` and ``assign_topics(vectors)`` tag items
    (default: the feed's entities, no topic); ``alerter`` runs the alert rules
    after each batch (default: none); ``health`` collects what it knows of its
    dependencies (default: a new one). ``producer`` is a
    :class:`~stream.publish.Publisher` (or a bare producer, wrapped in one).
    """

    def __init__(
        self,
        config: WorkerConfig,
        store: Store,
        scorer: Scorer,
        past: PastItems,
        consumer: KafkaConsumer,
        producer: Publisher | KafkaProducer,
        *,
        monitor: StreamMonitor | None = None,
        serving: ServingWatcher | None = None,
        origin: str | None = None,
        tag_entities: Callable[[str, list[str]], list[str]] | None = None,
        assign_topics: Callable[[np.ndarray], list[str | None]] | None = None,
        alerter: Alerter | None = None,
        health: Health | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.scorer = scorer
        self.past = past
        self.consumer = consumer
        self.publisher = (
            producer if isinstance(producer, Publisher) else Publisher(lambda: producer)
        )
        self.monitor = monitor if monitor is not None else no_drift_monitor()
        self.serving = serving
        self.origin = origin or f"worker:{socket.gethostname()}-{os.getpid()}"
        self.tag_entities = tag_entities or (lambda _text, given: list(given))
        self.assign_topics = assign_topics or (lambda vectors: [None] * len(vectors))
        self.alerter = alerter
        self.health = health or Health("worker")
        self._alerts_at = 0.0
        self.limits = config.limits
        # A scored message bigger than the producer accepts is refused before it is stored.
        self.max_publish_bytes = max(1 << 20, config.limits.max_message_bytes * 4) - 1024
        self.totals = BatchResult()
        self.assigned_partitions = 0  # as of the last poll (for /readyz)
        self._joined = False  # held partitions once: a coordinator lost after that is an outage
        self.metrics = WorkerMetrics(consumer, lambda: len(self.past))
        self.set_stop(threading.Event())

    def set_stop(self, stop: threading.Event) -> None:
        """The event that ends :meth:`run` and any wait for a dependency."""
        self.stop = stop
        self.keepalive = ConsumerKeepalive(self.consumer, stop)
        self.waiter = Waiter(
            self.health,
            stop,
            keepalive=self.keepalive,
            after_outage=self._after_outage,
            initial_s=self.config.retry_initial_s,
            max_s=self.config.retry_max_s,
        )

    @property
    def producer(self) -> KafkaProducer:
        return self.publisher.producer

    # -- the loop -------------------------------------------------------------------------

    def poll_batch(self) -> list[ConsumerRecord]:
        """Up to ``batch_size`` records, waiting at most ``batch_timeout_ms`` to fill it."""
        deadline = time.monotonic() + self.config.batch_timeout_ms / 1000.0
        batch: list[ConsumerRecord] = []
        while len(batch) < self.config.batch_size:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            # Block for the first record; after that, only until the time bound.
            wait_ms = 500 if not batch else remaining_ms
            polled = self.consumer.poll(
                timeout_ms=wait_ms, max_records=self.config.batch_size - len(batch)
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
        """Score until ``stop`` is set; the batch in hand is finished and committed first.

        Only ``stop`` ends it: outages are waited out, poison records
        dead-lettered, and a batch that fails for any other reason is read
        again after a backoff.
        """
        self.set_stop(stop)
        log.info(
            "worker_started",
            group=self.config.consumer_group,
            topic=self.config.topics.news,
            model_version=self.scorer.version,
            device=str(self.scorer.device),
            index_size=len(self.past),
        )
        failures = 0
        self.metrics.serving(self.scorer.version)
        while not stop.is_set():
            self.health.beat()
            records = self._poll()
            # Between batches, after the poll: a pointer moved before the poll returned
            # already serves this batch. Idle polls check too, so a swap is loaded early.
            self.follow_serving()
            if not records:
                self._idle()
                continue
            try:
                with batch_context(self.origin, records, self.scorer.version):
                    result = self.process(records)
            except Stopping:
                break  # not committed: the batch is read again after a restart
            except Exception:
                # A bug, or a failure nobody classified: never lose the batch, never
                # spin. Read it again after a backoff; nothing was committed.
                failures += 1
                BATCH_FAILURES.inc()
                first = records[0]
                log.exception(
                    "batch_failed_retrying",
                    topic=first.topic,
                    partition=first.partition,
                    offset=first.offset,
                    records=len(records),
                    failures=failures,
                )
                rewind(self.consumer, records)
                backoff = self.config.retry_initial_s * 2 ** min(failures, 8)
                self.keepalive(min(self.config.retry_max_s, backoff))
                self.keepalive.resume()
                continue
            failures = 0
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

    def _poll(self) -> list[ConsumerRecord]:
        try:
            records = self.poll_batch()
            self.assigned_partitions = len(self.consumer.assignment())
        except Exception as exc:  # noqa: BLE001 - the broker's problem, not ours to die of
            self.health.down("kafka", exc)
            log.warning("poll_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            self.stop.wait(2.0)
            return []
        self._joined = self._joined or self.assigned_partitions > 0
        return records

    def _idle(self) -> None:
        self._watch_kafka()
        self.metrics.lag()
        # Quiet: drift events from the learner still become alerts.
        if time.monotonic() - self._alerts_at >= _IDLE_ALERTS_S:
            self._mark_partitions([])  # read to the end now, maybe
            self._watch_alerts()

    def follow_serving(self) -> None:
        """Swap in the registry's serving version if it changed (call between batches only)."""
        if self.serving is None:
            return
        try:
            swapped = self.serving.refresh(self.scorer)
        except Exception:  # noqa: BLE001 - the old version keeps serving
            log.exception("serving_refresh_failed", serving=self.scorer.version)
            return
        if swapped is not None:
            # Confidence and label mix depend on the model: they start a new normal.
            self.monitor.model_changed()
            self.metrics.serving(self.scorer.version)

    # -- one batch: the stages, top to bottom -------------------------------------------

    def process(self, records: list[ConsumerRecord]) -> BatchResult:
        batch = _Batch(records=records, now=datetime.now(UTC), mask=self.config.masker)
        batch.result.records = len(records)
        stages: list[tuple[str, Callable[[_Batch], None]]] = [
            ("validate", self._validate),
            ("model", self._score),
            ("retrieve", self._enrich),
            ("store", self._store),
            ("publish", self._publish),
            ("commit", self._commit),
            ("index", self._catch_up),
            ("drift", self._watch_drift),
            ("alerts", self._alert),
        ]
        timings: dict[str, float] = {}
        for name, stage in stages:
            t0 = time.perf_counter()
            stage(batch)
            timings[name] = time.perf_counter() - t0
        result = batch.result
        result.timings = timings
        result.stored = len(batch.new_ids)
        result.rejected = len(batch.rejections)
        for stage_name, seconds in timings.items():
            BATCH_SECONDS.labels(stage_name).observe(seconds)
        ITEMS.labels(self.scorer.version).inc(result.stored)
        for r in batch.rejections:
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

    def _validate(self, batch: _Batch) -> None:
        """Valid items, or dead letters with a reason; the same item twice counts once."""
        seen: set[str] = set()
        for rec in batch.records:
            outcome = validate(
                rec.value, kafka_ts_ms=rec.timestamp, limits=self.limits, mask=self.config.masker
            )
            if isinstance(outcome, Rejected):
                batch.reject(rec, outcome.reason, outcome.detail)
            elif outcome.id in seen:
                batch.result.duplicates += 1
            else:
                seen.add(outcome.id)
                batch.accepted.append((rec, outcome))

    def _score(self, batch: _Batch) -> None:
        """Probabilities and frozen-space vectors; a text the model fails on is dead-lettered."""
        if not batch.accepted:
            return
        texts = [a.item.text for _, a in batch.accepted]

        tries = 0

        def attempt() -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
            nonlocal tries
            if tries:
                self.follow_serving()  # an operator's rollback is how a broken model is left
            tries += 1
            return self._score_isolated(texts)

        probs, vectors, bad = self.waiter.run(
            attempt, "model", transient=lambda e: isinstance(e, ModelUnhealthy) or is_outage(e)
        )
        if bad:
            for i in sorted(bad):
                rec, _ = batch.accepted[i]
                batch.reject(rec, "unscorable", bad[i])
            keep = [i for i in range(len(texts)) if i not in bad]
            batch.accepted = [batch.accepted[i] for i in keep]
            probs, vectors = probs[keep], vectors[keep]
        batch.probs, batch.vectors = probs, vectors

    def _score_isolated(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Score all texts; on failure bisect to the ones to blame (``{index: why}``)."""
        n = len(texts)
        probs = np.full((n, len(self.scorer.classifier.labels)), np.nan, dtype=np.float32)
        vectors: np.ndarray | None = None
        bad: dict[int, str] = {}

        def run(idx: list[int]) -> None:
            nonlocal vectors
            try:
                p, v = self.scorer.score([texts[i] for i in idx])
                p, v = np.asarray(p, dtype=np.float32), np.asarray(v, dtype=np.float32)
                if p.shape[0] != len(idx) or v.shape[0] != len(idx):
                    raise ValueError(f"scorer returned {p.shape[0]} rows for {len(idx)} texts")
            except Exception as exc:  # noqa: BLE001 - find the text to blame, if any
                if is_outage(exc):
                    raise
                if len(idx) == 1:
                    bad[idx[0]] = f"scoring failed: {type(exc).__name__}: {str(exc)[:300]}"
                    return
                mid = len(idx) // 2
                run(idx[:mid])
                run(idx[mid:])
                return
            if vectors is None:
                vectors = np.full((n, v.shape[1]), np.nan, dtype=np.float32)
            ok = np.isfinite(p).all(axis=1) & np.isfinite(v).all(axis=1)
            ok &= np.abs(p.sum(axis=1) - 1.0) < 1e-3
            for j, i in enumerate(idx):
                if ok[j]:
                    probs[i], vectors[i] = p[j], v[j]
                else:
                    bad[i] = "the model gave non-finite or unnormalised scores for this text"

        run(list(range(n)))
        if bad:
            self._check_model()  # blame the texts only if the model handles a plain one
            log.warning("texts_unscorable", n=len(bad), of=n)
        if vectors is None:
            vectors = np.zeros((n, 0), dtype=np.float32)
        return probs, vectors, bad

    def _check_model(self) -> None:
        try:
            p, v = self.scorer.score([_CANARY])
            fine = bool(np.isfinite(p).all() and np.isfinite(v).all())
        except Exception as exc:  # noqa: BLE001
            raise ModelUnhealthy(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        if not fine:
            raise ModelUnhealthy(f"version {self.scorer.version} gives non-finite scores")

    def _enrich(self, batch: _Batch) -> None:
        """Neighbours, topic and entities; then the scored message and the store row of each."""
        if not batch.accepted or batch.probs is None or batch.vectors is None:
            return
        probs, vectors = batch.probs, batch.vectors
        n = len(batch.accepted)
        neighbors: list[list[Neighbor]] = [[] for _ in range(n)]
        try:  # advisory: an item without neighbours is still an item
            neighbors = self.past.neighbors(
                vectors, self.config.neighbors_k, exclude=[a.id for _, a in batch.accepted]
            )
        except Exception:
            log.exception("neighbours_failed", items=n)
        topics: list[str | None] = [None] * n
        try:
            topics = list(self.assign_topics(vectors))
        except Exception:
            log.exception("topics_failed", items=n)
        labels = tuple(self.scorer.classifier.labels)
        scored_at = datetime.now(UTC)
        kept: list[int] = []
        for i, (rec, acc) in enumerate(batch.accepted):
            try:
                entities = self.tag_entities(acc.item.text, list(acc.item.entities))
            except Exception:
                log.exception("entities_failed", item_id=acc.id)
                entities = list(acc.item.entities)
            try:
                scored = scored_item(
                    acc,
                    probs[i],
                    labels,
                    version=self.scorer.version,
                    entities=entities,
                    topic=topics[i],
                    neighbors=neighbors[i],
                    scored_at=scored_at,
                )
                message = scored.model_dump_json().encode("utf-8")
                if len(message) > self.max_publish_bytes:
                    raise ValueError(f"scored message of {len(message)} bytes is too large")
                row = item_row(
                    scored,
                    probs[i],
                    vectors[i],
                    partition=rec.partition,
                    offset=rec.offset,
                    kafka_ts=kafka_time(rec.timestamp),
                )
            except Exception as exc:  # noqa: BLE001 - this item's own problem
                batch.reject(rec, "unpublishable", f"{type(exc).__name__}: {str(exc)[:300]}")
                continue
            batch.messages[acc.id] = message
            batch.rows.append(row)
            batch.raw_by_id[acc.id] = rec
            kept.append(i)
        if len(kept) < n:
            batch.accepted = [batch.accepted[i] for i in kept]
            batch.probs, batch.vectors = probs[kept], vectors[kept]

    def _store(self, batch: _Batch) -> None:
        """Write items and dead letters idempotently; waits out outages, isolates poison rows."""
        parts = [("item", r) for r in batch.rows] + [("letter", r) for r in batch.rejections]
        new_ids, replayed, rej_seqs = self._write(parts, batch)
        batch.new_ids, batch.replayed, batch.rej_seqs = new_ids, replayed, rej_seqs
        self.metrics.stored([batch.raw_by_id[i].timestamp for i in new_ids if i in batch.raw_by_id])
        stored_rows = sum(1 for kind, _ in parts if kind == "item")
        batch.result.duplicates += stored_rows - len(new_ids) - len(replayed)
        batch.result.republished = len(replayed)

    def _write(
        self, parts: list[tuple[str, dict[str, Any]]], batch: _Batch
    ) -> tuple[set[str], set[str], list[int]]:
        rows = [r for kind, r in parts if kind == "item"]
        letters = [r for kind, r in parts if kind == "letter"]
        try:
            return self.waiter.run(
                lambda: self.store.write_batch(rows, letters, written_seqs=batch.seqs), "store"
            )
        except Stopping:
            raise
        except Exception as exc:  # noqa: BLE001 - maybe a row of its own: find it
            if len(parts) == 1:
                return self._poison(parts[0], batch, exc)
        # Bisect: each half in its own transaction (writes are idempotent).
        new: set[str] = set()
        replayed: set[str] = set()
        seqs: list[int] = []
        mid = len(parts) // 2
        for half in (parts[:mid], parts[mid:]):
            a, b, c = self._write(half, batch)
            new, replayed, seqs = new | a, replayed | b, seqs + c
        return new, replayed, seqs

    def _poison(
        self, part: tuple[str, dict[str, Any]], batch: _Batch, exc: Exception
    ) -> tuple[set[str], set[str], list[int]]:
        """One row that would not store: its own fault only if the store takes a probe."""
        self.waiter.run(self.store.probe, "store")  # waits while the store is the problem
        text = str(exc).splitlines()[0][:300] if str(exc) else ""
        detail = f"{type(exc).__name__}: {text}"
        kind, row = part
        if kind == "letter":
            # A dead letter the store refuses is still said on the dead-letter topic.
            log.error("dead_letter_unstorable", detail=detail, **_position(row))
            batch.unstored.append(row)
            return set(), set(), []
        rec = batch.raw_by_id[row["id"]]
        log.error("item_unstorable", item_id=row["id"][:100], detail=detail)
        batch.messages.pop(row["id"], None)
        letter = batch.letter(rec, "unstorable", detail)
        batch.rejections.append(letter)
        return self._write([("letter", letter)], batch)

    def _publish(self, batch: _Batch) -> None:
        """Checked sends of new (and repaired) items and dead letters; then flag them published."""
        topics = self.config.topics
        replayed = batch.replayed
        on_topic = self.publisher.on_topic
        if replayed and on_topic is not None:
            # A previous attempt stored these and may or may not have published them.
            already = self.waiter.run(lambda: on_topic(topics.scored, set(replayed)), "kafka")
            if already:
                self.waiter.run(lambda: self.store.mark_published(already), "store")
            log.info(
                "replay_repaired", stored_before=len(replayed), republished=len(replayed - already)
            )
            replayed = replayed - already
        to_publish = [i for i in batch.messages if i in batch.new_ids or i in replayed]
        outgoing = [
            Outgoing(topics.scored, i.encode(), batch.messages[i], ("item", i)) for i in to_publish
        ]
        outgoing += self._dead_letters(batch.rej_seqs)
        outgoing += [
            dlq_message(r, topics.dlq, ref=("unstored", n)) for n, r in enumerate(batch.unstored)
        ]
        delivery = self.publisher.deliver(outgoing, self.waiter)
        if delivery.undeliverable:
            again = self._dead_letter_undeliverable(batch, delivery.undeliverable)
            more = self.publisher.deliver(again, self.waiter)
            delivery.acked |= more.acked
            delivery.found |= more.found
        published = delivery.published
        item_ids = [ref[1] for ref in published if ref[0] == "item"]
        seqs = [ref[1] for ref in published if ref[0] == "dlq"]
        self.waiter.run(lambda: self.store.mark_published(item_ids, seqs), "store")

    def _dead_letters(self, seqs: list[int]) -> list[Outgoing]:
        if not seqs:
            return []
        rows = self.waiter.run(lambda: self.store.rejections_by_seq(seqs), "store")
        return [dlq_message(r, self.config.topics.dlq) for r in rows]

    def _dead_letter_undeliverable(
        self, batch: _Batch, undeliverable: dict[Hashable, str]
    ) -> list[Outgoing]:
        """Stored items the broker refused for their own sake move to the dead letters."""
        letters = []
        ids = []
        for ref, why in undeliverable.items():
            if ref[0] != "item":
                log.error("dead_letter_undeliverable", ref=str(ref), error=why)
                continue
            rec = batch.raw_by_id[ref[1]]
            ids.append(ref[1])
            batch.new_ids.discard(ref[1])
            letters.append(batch.letter(rec, "unpublishable", why))
        if not ids:
            return []
        batch.rejections.extend(letters)
        seqs = self.waiter.run(lambda: self.store.dead_letter_items(ids, letters), "store")
        log.warning("items_dead_lettered_after_store", n=len(ids))
        return self._dead_letters(seqs)

    def _commit(self, batch: _Batch) -> None:
        """Commit the batch's offsets (waiting out outages); a rebalance hands it on."""
        commit_offsets(self.consumer, batch.records, self.waiter)
        LAST_BATCH.set_to_current_time()
        self.metrics.committed()

    def _catch_up(self, batch: _Batch) -> None:
        """The index takes the new items (for the next batch's neighbours); advisory.

        This batch's own rows go in from memory (the bytes it stored); only what other
        workers stored meanwhile is read from the store.
        """
        written = [
            (batch.seqs[row["id"]], row["id"], row["label"], row["embedding"])
            for row in batch.rows
            if row["id"] in batch.new_ids  # each has its seq (write_batch gives both)
        ]
        self._advise("index", lambda: self.past.catch_up(written))
        self._mark_partitions(batch.accepted)

    # -- outages --------------------------------------------------------------------------

    def _after_outage(self, dependency: str) -> None:
        try:
            self.keepalive.resume()
        except Exception:  # noqa: BLE001
            log.exception("resume_failed")

    def _watch_kafka(self) -> None:
        """An idle worker notices a broker outage (and its end) through its group coordinator."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        unknown = getattr(coordinator, "coordinator_unknown", None)
        if unknown is None:
            return
        try:
            gone = bool(unknown())
        except Exception:  # noqa: BLE001
            return
        if gone and self._joined and self.health.is_up("kafka"):
            self.health.down("kafka", "group coordinator unknown")
        elif not gone and not self.health.is_up("kafka"):
            self.health.up("kafka")

    def _advise(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run an advisory step: a failure is logged and never fails the batch."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            if is_outage(exc):
                log.warning(f"{what}_skipped_outage", error=f"{type(exc).__name__}")
            else:
                log.exception(f"{what}_failed")
            return None

    # -- alerts -------------------------------------------------------------------------

    def _alert(self, batch: _Batch) -> None:
        batch.result.alerts = self._watch_alerts()

    def _watch_alerts(self) -> int:
        """Run the alert rules over what the store holds now; never fails the batch."""
        if self.alerter is None:
            return 0
        self._alerts_at = time.monotonic()
        return len(self._advise("alerting", self.alerter.step) or [])

    # -- drift --------------------------------------------------------------------------

    def _watch_drift(self, batch: _Batch) -> None:
        """Feed the batch to the monitor and emit what fired; never fails the batch."""
        if batch.probs is None or batch.vectors is None or not batch.accepted:
            return
        accepted = batch.accepted
        first = self.monitor.seen
        try:
            events = self.monitor.update(batch.probs, batch.vectors)
        except Exception:
            log.exception("drift_monitor_failed", items=len(accepted), position=first)
            return
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
        batch.result.drift_events = len(events)

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
                "item_ts": acc.item.ts.isoformat() if acc.item.ts else None,
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
        # Advisory: sent within linger_ms, a failure is logged. Signed as origin "worker"
        # (the learner acts only on signed commands from the origins it allows).
        signer = self.config.signer
        value = signer.sign_json(message) if signer else message.model_dump_json().encode()
        self.publisher.send_nowait(self.config.topics.control, None, value, "drift_announce")

    # -- helpers --------------------------------------------------------------------------

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

        def mark() -> None:
            marks = []
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

        self._advise("partition_marks", mark)


def commit_offsets(consumer: KafkaConsumer, records: list[ConsumerRecord], waiter: Waiter) -> bool:
    """Commit past ``records`` (waiting out outages); False when a rebalance took them.

    A commit refused because the group moved on is not an error: what was
    done is stored (and published) already, and the partition's new owner
    reads the records again, which the store's idempotence absorbs.
    """
    offsets: dict[TopicPartition, int] = {}
    for rec in records:
        tp = TopicPartition(rec.topic, rec.partition)
        offsets[tp] = max(offsets.get(tp, -1), rec.offset + 1)
    commit = {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
    try:
        waiter.run(
            lambda: consumer.commit(commit),
            "kafka",
            transient=lambda e: is_outage(e) and not isinstance(e, COMMIT_LOST),
            what="commit",
        )
    except COMMIT_LOST as exc:
        log.warning(
            "commit_lost_to_rebalance",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in offsets),
            error=f"{type(exc).__name__}: {str(exc)[:200]}",
        )
        return False
    return True


def rewind(consumer: KafkaConsumer, records: list[ConsumerRecord]) -> None:
    """Seek back so uncommitted ``records`` are read again (after an unexpected error)."""
    first: dict[TopicPartition, int] = {}
    for rec in records:
        tp = TopicPartition(rec.topic, rec.partition)
        first[tp] = min(first.get(tp, rec.offset), rec.offset)
    for tp, offset in first.items():
        try:
            consumer.seek(tp, offset)
        except Exception:  # noqa: BLE001 - revoked meanwhile: its new owner reads it
            log.info("rewind_skipped", partition=f"{tp.topic}:{tp.partition}")


def _position(row: dict[str, Any]) -> dict[str, Any]:
    return {"topic": row["topic"], "partition": row["partition"], "offset": row["offset"]}
