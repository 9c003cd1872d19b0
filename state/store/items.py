"""Scored items, their outbox flags, rejections and per-partition progress marks."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:  # numpy is imported where it is used: `moodwire stats` needs none
    import numpy as np

from state.store.base import StoreBase
from state.store.schema import (
    as_utc,
    chunks,
    decode_embeddings,
    first_of_each,
    item_entities,
    items,
    partition_marks,
    rejected,
)


class ItemsStore(StoreBase):
    """Scored items, their outbox flags, rejections and per-partition progress marks."""

    def write_batch(
        self,
        scored: list[dict[str, Any]],
        rejections: list[dict[str, Any]],
        *,
        written_seqs: dict[str, int] | None = None,
    ) -> tuple[set[str], set[str], list[int]]:
        """Insert a batch idempotently, in one transaction.

        Returns ``(new_ids, replayed_unpublished_ids, rejection_seqs_to_publish)``:
        items written now, items that were written by an earlier attempt that
        crashed before it was acknowledged by Kafka (the caller must check the
        topic before re-publishing them), and rejections still to publish.
        ``written_seqs``, when given, also receives the ``seq`` of each item written
        now (the index takes them without reading them back).
        """
        now = datetime.now(UTC)
        ids = [row["id"] for row in scored]
        with self.engine.begin() as conn:
            # Insert what is new (ON CONFLICT DO NOTHING): the ids RETURNING gives are the
            # rows this call wrote, even with another worker writing the same ones now.
            batch = [dict(row, stored_at=now, published=False) for row in first_of_each(scored)]
            seqs: dict[str, int] = {}
            if batch:
                stmt = self._insert(items).returning(items.c.id, items.c.seq)
                seqs = {r.id: int(r.seq) for r in conn.execute(stmt, batch)}
            written = set(seqs)
            fresh = [row for row in batch if row["id"] in written]
            before: dict[str, bool] = {}
            for chunk in chunks([i for i in dict.fromkeys(ids) if i not in written], 500):
                q = sa.select(items.c.id, items.c.published).where(items.c.id.in_(chunk))
                before.update({r.id: bool(r.published) for r in conn.execute(q)})
            if fresh:
                tags = [
                    {
                        "item_id": row["id"],
                        "entity": entity,
                        "ts": row["ts"],
                        "label": row["label"],
                        "score": row["p_positive"] - row["p_negative"],
                    }
                    for row in fresh
                    for entity in dict.fromkeys(row.get("entities") or ())
                ]
                if tags:
                    conn.execute(self._insert(item_entities), tags)
            replayed = {i for i, published in before.items() if not published}
            rej_seqs: list[int] = []
            if rejections:
                conn.execute(self._insert(rejected), [dict(r, published=False) for r in rejections])
                for r in rejections:
                    q = sa.select(rejected.c.seq).where(
                        rejected.c.topic == r["topic"],
                        rejected.c.partition == r["partition"],
                        rejected.c.offset == r["offset"],
                        rejected.c.published.is_(False),
                    )
                    rej_seqs.extend(conn.execute(q).scalars())
        if written_seqs is not None:
            written_seqs.update(seqs)
        return {row["id"] for row in fresh}, replayed, rej_seqs

    def mark_published(
        self, item_ids: Iterable[str] = (), rejection_seqs: Iterable[int] = ()
    ) -> None:
        item_ids, rejection_seqs = list(item_ids), list(rejection_seqs)
        with self.engine.begin() as conn:
            for chunk in chunks(item_ids, 500):
                conn.execute(items.update().where(items.c.id.in_(chunk)).values(published=True))
            for chunk in chunks(rejection_seqs, 500):
                conn.execute(
                    rejected.update().where(rejected.c.seq.in_(chunk)).values(published=True)
                )

    def dead_letter_items(self, ids: Sequence[str], rejections: list[dict[str, Any]]) -> list[int]:
        """Move stored items that cannot be published into ``rejected``, in one transaction.

        Returns the rejections' sequence numbers (to publish on the dead-letter topic).
        """
        with self.engine.begin() as conn:
            for chunk in chunks(list(ids), 500):
                conn.execute(item_entities.delete().where(item_entities.c.item_id.in_(chunk)))
                conn.execute(items.delete().where(items.c.id.in_(chunk)))
            if rejections:
                conn.execute(self._insert(rejected), [dict(r, published=False) for r in rejections])
            seqs: list[int] = []
            for r in rejections:
                q = sa.select(rejected.c.seq).where(
                    rejected.c.topic == r["topic"],
                    rejected.c.partition == r["partition"],
                    rejected.c.offset == r["offset"],
                )
                seqs.extend(conn.execute(q).scalars())
        return seqs

    def mark_partitions(self, marks: list[dict[str, Any]]) -> None:
        """Record, per ``(topic, partition)``, the newest event time stored and ``caught_up``."""
        if not marks:
            return
        now = datetime.now(UTC)
        insert = self._upsert(partition_marks)
        old, new = partition_marks.c.max_ts, insert.excluded.max_ts
        # The newer of the stored and the given event time (either may be missing).
        newest = sa.case((new.is_(None), old), (old.is_(None), new), (new > old, new), else_=old)
        stmt = insert.on_conflict_do_update(
            index_elements=[partition_marks.c.topic, partition_marks.c.partition],
            set_={
                "max_ts": newest,
                "caught_up": insert.excluded.caught_up,
                "updated_at": insert.excluded.updated_at,
            },
        )
        with self.engine.begin() as conn:
            for m in marks:  # one statement each: a batch may name a partition twice
                conn.execute(
                    stmt,
                    {
                        "topic": m["topic"],
                        "partition": m["partition"],
                        "max_ts": m.get("max_ts"),
                        "caught_up": bool(m["caught_up"]),
                        "updated_at": now,
                    },
                )

    def partition_mark_rows(self, topic: str) -> list[dict[str, Any]]:
        q = sa.select(partition_marks).where(partition_marks.c.topic == topic)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["max_ts"], r["updated_at"] = as_utc(r["max_ts"]), as_utc(r["updated_at"])
        return rows

    def items_for_alerts(self, after_seq: int, limit: int = 5000) -> list[dict[str, Any]]:
        """What the alert rules need of items stored after ``after_seq``, in order."""
        cols = (
            items.c.seq,
            items.c.id,
            items.c.ts,
            items.c.entities,
            items.c.topic,
            items.c.label,
            items.c.p_negative,
            items.c.p_positive,
            items.c.text,
            items.c.model_version,
        )
        with self.engine.connect() as conn:
            q = sa.select(*cols).where(items.c.seq > after_seq).order_by(items.c.seq).limit(limit)
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["ts"] = as_utc(r["ts"])
        return rows

    def first_seq_since(self, ts: datetime) -> int:
        """The sequence number just before the first item with an event time at or after ``ts``."""
        with self.engine.connect() as conn:
            seq = conn.execute(sa.select(sa.func.min(items.c.seq)).where(items.c.ts >= ts)).scalar()
            last = conn.execute(sa.select(sa.func.max(items.c.seq))).scalar()
        if seq is None:
            return int(last or 0)
        return int(seq) - 1

    def latest_item_ts(self) -> datetime | None:
        with self.engine.connect() as conn:
            return as_utc(conn.execute(sa.select(sa.func.max(items.c.ts))).scalar())

    def items_by_ids(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``id -> {text, label, model_version, confidence, ts, entities, topic}`` of stored ones."""
        out: dict[str, dict[str, Any]] = {}
        cols = (
            items.c.id,
            items.c.text,
            items.c.label,
            items.c.model_version,
            items.c.confidence,
            items.c.ts,
            items.c.entities,
            items.c.topic,
        )
        with self.engine.connect() as conn:
            for chunk in chunks(list(ids), 500):
                for r in conn.execute(sa.select(*cols).where(items.c.id.in_(chunk))).mappings():
                    out[r["id"]] = dict(r, ts=as_utc(r["ts"]))
        return out

    def embeddings_by_ids(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The stored ones among ``ids`` (in the order given) and their frozen-space embeddings."""
        import numpy as np

        found: dict[str, bytes] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(ids), 500):
                q = sa.select(items.c.id, items.c.embedding).where(items.c.id.in_(chunk))
                found.update(dict(conn.execute(q).all()))
        order = [i for i in dict.fromkeys(ids) if i in found]
        if not order:
            return [], np.zeros((0, 0), dtype=np.float32)
        blobs = [found[i] for i in order]
        return order, decode_embeddings(blobs, len(blobs[0]) // 2)

    def recent_texts(self, n: int) -> list[str]:
        """The texts of the last ``n`` items stored (for shadow-scoring a candidate)."""
        with self.engine.connect() as conn:
            q = sa.select(items.c.text).order_by(items.c.seq.desc()).limit(n)
            return list(conn.execute(q).scalars())[::-1]

    def count_items(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(items)).scalar_one())

    def item_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(items.c.id).order_by(items.c.seq)).scalars())

    def get_item(self, item_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(items).where(items.c.id == item_id)).mappings().first()
        if row is None:
            return None
        out = dict(row)
        for key in ("ts", "kafka_ts", "scored_at", "stored_at"):
            out[key] = as_utc(out[key])
        return out

    def rejections(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(rejected).order_by(rejected.c.seq)
            return [dict(r) for r in conn.execute(q).mappings()]

    def rejections_by_seq(self, seqs: Sequence[int]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(rejected).where(rejected.c.seq.in_(list(seqs)))
            return [dict(r) for r in conn.execute(q).mappings()]

    def embeddings_after(
        self,
        seq: int,
        limit: int = 10_000,
        *,
        with_embedding: bool = True,
        skip: Collection[int] = (),
    ) -> Iterator[tuple[int, str, str, bytes | None]]:
        """``(seq, id, label, embedding)`` of items stored after ``seq``, in order, less
        the ``skip`` seqs (a writer's own rows, which it holds already)."""
        vector = items.c.embedding if with_embedding else sa.null()
        with self.engine.connect() as conn:
            q = sa.select(items.c.seq, items.c.id, items.c.label, vector).where(items.c.seq > seq)
            if skip:
                q = q.where(items.c.seq.not_in(list(skip)))
            q = q.order_by(items.c.seq).limit(limit)
            yield from (tuple(r) for r in conn.execute(q))

    def latencies_ms(self, id_prefix: str = "") -> np.ndarray:
        """Produce-to-stored latency of items with a Kafka timestamp (ids starting with a prefix)."""
        import numpy as np

        q = sa.select(items.c.kafka_ts, items.c.stored_at).where(items.c.kafka_ts.is_not(None))
        if id_prefix:
            q = q.where(items.c.id.startswith(id_prefix, autoescape=True))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return np.array(
            [(as_utc(s) - as_utc(k)).total_seconds() * 1000.0 for k, s in rows], dtype=np.float64
        )
