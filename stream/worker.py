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
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Histogram

from moodwire.settings import Settings
from moodwire.store import Store, encode_embedding
from retrieval.past_items import PastItems
from stream.schemas import Rejection, ScoredItem
from stream.scorer import Scorer
from stream.validate import Accepted, Limits, Rejected, validate

log = structlog.get_logger(__name__)

ITEMS = Counter("moodwire_items_scored_total", "Items scored and stored", ["model_version"])
REJECTED = Counter(
    "moodwire_items_rejected_total", "Items sent to the dead-letter topic", ["reason"]
)
DUPLICATES = Counter("moodwire_items_duplicate_total", "Records whose item was already stored")
BATCH_SECONDS = Histogram("moodwire_batch_seconds", "Wall time per batch, by stage", ["stage"])

_RAW_KEEP = 2000  # characters of a rejected value kept for the operator


@dataclass
class BatchResult:
    records: int = 0
    stored: int = 0
    rejected: int = 0
    duplicates: int = 0
    republished: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class Worker:
    """One member of the scoring consumer group."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        scorer: Scorer,
        past: PastItems,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
    ) -> None:
        self.settings = settings
        self.store = store
        self.scorer = scorer
        self.past = past
        self.consumer = consumer
        self.producer = producer
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
            if not records:
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
        )
        return self.totals

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
        if accepted:
            texts = [a.item.text for _, a in accepted]
            probs, vectors = self.scorer.score(texts)
            t2 = time.perf_counter()
            neighbors = self.past.neighbors(
                vectors, self.settings.neighbors_k, exclude=[a.id for _, a in accepted]
            )
            scored_at = datetime.now(UTC)
            for (rec, acc), p, v, nbrs in zip(accepted, probs, vectors, neighbors, strict=True):
                label_idx = int(p.argmax())
                item = acc.item
                scored = ScoredItem(
                    id=acc.id,
                    text=item.text,
                    ts=item.ts,
                    source=item.source,
                    entities=list(item.entities),
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
                        "entities": list(item.entities),
                        "meta": dict(item.meta),
                        "label": scored.label,
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
        t6 = time.perf_counter()

        result.stored = len(new_ids)
        result.rejected = len(rejections)
        result.timings = {
            "validate": t1 - t0,
            "model": t2 - t1,
            "retrieve": t3 - t2,
            "store": t4 - t3,
            "publish": t5 - t4,
            "commit": t6 - t5,
        }
        for stage, seconds in result.timings.items():
            BATCH_SECONDS.labels(stage).observe(seconds)
        ITEMS.labels(self.scorer.version).inc(result.stored)
        for r in rejections:
            REJECTED.labels(r["reason"]).inc()
        DUPLICATES.inc(result.duplicates)
        for key in ("records", "stored", "rejected", "duplicates", "republished"):
            setattr(self.totals, key, getattr(self.totals, key) + getattr(result, key))
        log.debug("batch_done", **{k: v for k, v in vars(result).items() if k != "timings"})
        return result

    def _commit(self, records: list[ConsumerRecord]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            offsets[tp] = max(offsets.get(tp, -1), rec.offset + 1)
        self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})

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
