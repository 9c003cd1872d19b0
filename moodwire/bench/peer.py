"""The peer of ``moodwire bench throughput``: what a user would otherwise write.

A kafka-python consumer in its own group reads the topic; each batch goes
through a Hugging Face ``transformers.pipeline("text-classification")`` for the
three probabilities and a sentence-transformers ``SentenceTransformer.encode``
for the frozen-space vector, a flat FAISS index gives the neighbours, the
batch is written to a store like the worker's, and the offsets are committed.
Same texts, same classifier weights, same encoder, same batch size, same
machine as the path it is compared with; written plainly, with no deliberate
slowness, and without what the path adds (validation, dead letters, masking,
entity and topic tags, publishing, drift, alerts, outage handling).

The consumer is built through :func:`stream.clients.make_consumer`, so the
security settings apply as they do to every other client.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import sentence_transformers
import torch
import transformers
from kafka import TopicPartition
from sentence_transformers import SentenceTransformer
from transformers.utils import logging as hf_logging

from learner.data import LABELS
from retrieval.encoding import default_encoder_path
from state.store import Store, encode_embedding
from stream.clients import make_consumer
from stream.config import KafkaConfig

# poll: filling each batch after the first; neighbors: the index's search and add;
# store: building the rows and writing them.
STAGES = ("poll", "classify", "encode", "neighbors", "store", "commit")


@dataclass
class PeerRun:
    """What one peer run did, and how long each stage took."""

    items: int = 0
    batches: int = 0
    seconds: float = 0.0  # first record in hand -> last batch committed
    # partition -> the offset after the last record read (what a commit must hold)
    positions: dict[int, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


class Peer:
    """Classifier pipeline, sentence encoder, flat index and store: one batch at a time.

    ``model`` and ``tokenizer`` are the served classifier's Hugging Face
    objects (the same weights the path scores with, whatever their head).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: torch.device,
        store_url: str,
        model_version: str,
        max_length: int = 128,
        neighbors_k: int = 5,
        encoder_path: Path | None = None,
    ) -> None:
        self.device = device
        self.max_length = max_length
        self.neighbors_k = neighbors_k
        self.model_version = model_version
        # The pipeline logs an error for a head class outside its list (Moodwire's mean-pool
        # head is one); it runs any model whose output has logits, so that is not news here.
        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity(hf_logging.CRITICAL)
        try:
            self.classify = transformers.pipeline(
                "text-classification",
                model=model,
                tokenizer=tokenizer,
                device=device,
                top_k=None,
            )
        finally:
            hf_logging.set_verbosity(previous)
        self.encoder = SentenceTransformer(
            str(encoder_path or default_encoder_path()), device=str(device)
        )
        # The path truncates at max_length: the same text reaches both models.
        self.encoder.max_seq_length = max_length
        self.dim = int(self.encoder.get_embedding_dimension())
        self.index = faiss.IndexFlatIP(self.dim)
        self.index_ids: list[str] = []
        self.store = Store(store_url)

    def probabilities(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Columns in ``LABELS`` order, whatever order the pipeline returns them in."""
        out = self.classify(
            texts, batch_size=batch_size, truncation=True, max_length=self.max_length
        )
        col = {label: j for j, label in enumerate(LABELS)}
        probs = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
        for i, scores in enumerate(out):
            for s in scores:
                probs[i, col[str(s["label"]).lower()]] = s["score"]
        return probs

    def vectors(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self.encoder.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32)

    def neighbors(self, vectors: np.ndarray) -> list[list[dict[str, Any]]]:
        """The ``k`` most similar items seen before, then this batch joins the index."""
        found: list[list[dict[str, Any]]] = [[] for _ in range(len(vectors))]
        if self.neighbors_k and self.index.ntotal:
            sims, idx = self.index.search(vectors, self.neighbors_k)
            for row, (srow, irow) in enumerate(zip(sims, idx, strict=True)):
                found[row] = [
                    {"id": self.index_ids[j], "similarity": round(float(s), 4), "label": None}
                    for s, j in zip(srow, irow, strict=True)
                    if j >= 0
                ]
        return found

    def remember(self, ids: list[str], vectors: np.ndarray) -> None:
        self.index.add(vectors)
        self.index_ids.extend(ids)

    def warm_up(self, texts: list[str], batch_size: int) -> None:
        """One batch through both models, as the path's models were warm when timed."""
        self.probabilities(texts[:batch_size], batch_size)
        self.vectors(texts[:batch_size], batch_size)

    def rows(
        self,
        records: list[Any],
        payloads: list[dict[str, Any]],
        probs: np.ndarray,
        vectors: np.ndarray,
        neighbors: list[list[dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        """The store's rows, column for column as the worker's ``item_row`` makes them."""
        scored_at = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        for rec, payload, p, v, near in zip(
            records, payloads, probs, vectors, neighbors, strict=True
        ):
            kafka_ts = datetime.fromtimestamp(rec.timestamp / 1000, UTC)
            ts = datetime.fromisoformat(payload["ts"]) if payload.get("ts") else kafka_ts
            k = int(p.argmax())
            rows.append(
                {
                    "id": str(payload["id"]),
                    "text": payload["text"],
                    "ts": ts,
                    "source": payload.get("source"),
                    "entities": [],
                    "meta": payload.get("meta") or {},
                    "label": LABELS[k],
                    "topic": None,
                    "p_negative": float(p[0]),
                    "p_neutral": float(p[1]),
                    "p_positive": float(p[2]),
                    "confidence": round(float(p[k]), 6),
                    "model_version": self.model_version,
                    "neighbors": near,
                    "embedding": encode_embedding(v),
                    "src_partition": rec.partition,
                    "src_offset": rec.offset,
                    "kafka_ts": kafka_ts,
                    "scored_at": scored_at,
                }
            )
        return rows

    def consume(
        self,
        kafka: KafkaConfig,
        topic: str,
        *,
        group_id: str,
        batch_size: int,
        expected: int,
        timeout_s: float = 1800.0,
    ) -> PeerRun:
        """Read ``expected`` records of ``topic`` in batches of ``batch_size``, committing each."""
        run = PeerRun()
        consumer = make_consumer(kafka, topic, group_id=group_id, client_id="moodwire-bench-peer")
        t = run.stage_seconds
        deadline = time.monotonic() + timeout_s
        start: float | None = None
        try:
            while run.items < expected:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"peer: {run.items} of {expected} items in {timeout_s:.0f}s")
                t0 = time.perf_counter()
                batch: list[Any] = []
                # Fill the batch; stop at the first poll that brings nothing more.
                while len(batch) < batch_size:
                    polled = consumer.poll(
                        timeout_ms=500 if not batch else 50, max_records=batch_size - len(batch)
                    )
                    if not polled:
                        break
                    for records in polled.values():
                        batch.extend(records)
                if not batch:
                    continue  # joining the group, or nothing yet: not timed
                t1 = time.perf_counter()
                if start is None:
                    start = t1
                else:
                    t["poll"] += t1 - t0
                payloads = [json.loads(r.value) for r in batch]
                texts = [p["text"] for p in payloads]
                probs = self.probabilities(texts, batch_size)
                t2 = time.perf_counter()
                vectors = self.vectors(texts, batch_size)
                t3 = time.perf_counter()
                neighbors = self.neighbors(vectors)
                self.remember([str(p["id"]) for p in payloads], vectors)
                t4 = time.perf_counter()
                self.store.write_batch(self.rows(batch, payloads, probs, vectors, neighbors), [])
                t5 = time.perf_counter()
                consumer.commit()
                t6 = time.perf_counter()
                t["classify"] += t2 - t1
                t["encode"] += t3 - t2
                t["neighbors"] += t4 - t3
                t["store"] += t5 - t4
                t["commit"] += t6 - t5
                run.items += len(batch)
                for r in batch:
                    run.positions[r.partition] = max(
                        run.positions.get(r.partition, 0), r.offset + 1
                    )
                run.batches += 1
                run.seconds = t6 - start
        finally:
            consumer.close()
        return run


def committed_offsets(kafka: KafkaConfig, topic: str, group_id: str) -> dict[int, int | None]:
    """The group's committed offset of each partition of ``topic``, as the broker holds it."""
    reader = make_consumer(kafka, group_id=group_id, client_id="moodwire-bench-peer-check")
    try:
        parts = reader.partitions_for_topic(topic) or set()
        return {p: reader.committed(TopicPartition(topic, p)) for p in sorted(parts)}
    finally:
        reader.close()


def versions() -> dict[str, str]:
    """The libraries the peer is written with."""
    return {
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "faiss": faiss.__version__,
        "torch": torch.__version__,
    }
