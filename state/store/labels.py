"""Human and feed labels, topic corrections, and serving accuracy measured on them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from state.store.base import StoreBase
from state.store.schema import (
    first_of_each,
    items,
    labels,
)


class LabelsStore(StoreBase):
    """Human and feed labels, topic corrections, and serving accuracy measured on them."""

    def add_labels(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store labels idempotently (on their ``id``); returns the rows that were new."""
        if not rows:
            return []
        with self.engine.begin() as conn:
            return self.add_labels_in(conn, rows)

    def add_labels_in(self, conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`add_labels` inside the caller's transaction (e.g. :meth:`audited`'s)."""
        now = datetime.now(UTC)
        # The first of each id in this batch; RETURNING names those the store did not have.
        batch = [dict(r, received_at=now) for r in first_of_each(rows)]
        if not batch:
            return []
        stmt = self._insert(labels).returning(labels.c.id)
        written = set(conn.execute(stmt, batch).scalars())
        return [r for r in batch if r["id"] in written]

    def topic_corrections(self, after_seq: int = 0) -> list[dict[str, Any]]:
        """Analysts' topic corrections by item id, in arrival order (``seq, item_id, topic``)."""
        q = (
            sa.select(labels.c.seq, labels.c.item_id, labels.c.topic)
            .where(labels.c.seq > after_seq, labels.c.topic.is_not(None))
            .where(labels.c.item_id.is_not(None))
            .order_by(labels.c.seq)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def labels_after(self, seq: int, limit: int = 10_000) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(labels).where(labels.c.seq > seq).order_by(labels.c.seq).limit(limit)
            return [dict(r) for r in conn.execute(q).mappings()]

    def recent_accuracy(self, n: int = 200) -> dict[str, tuple[int, float]]:
        """Each model version's accuracy on the latest ``n`` labels of items it scored.

        ``{version: (labels, accuracy)}``: how the serving model does on what
        the stream brings now (the whole-history figure of :meth:`stats` moves
        slowly after a drift).
        """
        latest = (
            sa.select(labels.c.item_id, labels.c.label)
            .where(labels.c.label.is_not(None), labels.c.item_id.is_not(None))
            .order_by(labels.c.seq.desc())
            .limit(n)
            .subquery()
        )
        correct = sa.case((latest.c.label == items.c.label, 1), else_=0)
        q = (
            sa.select(items.c.model_version, sa.func.count(), sa.func.sum(correct))
            .select_from(latest.join(items, latest.c.item_id == items.c.id))
            .group_by(items.c.model_version)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return {v: (int(k), round(int(c or 0) / k, 4)) for v, k, c in rows if k}

    @staticmethod
    def _label_stats(conn: Any) -> dict[str, Any]:
        """Labels in all, by source, and joined to the scored items: accuracy per version."""
        sentiment = labels.c.label.is_not(None)
        total = conn.execute(
            sa.select(sa.func.count()).select_from(labels).where(sentiment)
        ).scalar_one()
        topics = conn.execute(
            sa.select(sa.func.count()).select_from(labels).where(labels.c.topic.is_not(None))
        ).scalar_one()
        by_source = dict(
            conn.execute(
                sa.select(labels.c.source, sa.func.count())
                .where(sentiment)
                .group_by(labels.c.source)
            ).all()
        )
        correct = sa.case((labels.c.label == items.c.label, 1), else_=0)
        per_version = conn.execute(
            sa.select(items.c.model_version, sa.func.count(), sa.func.sum(correct))
            .select_from(labels.join(items, labels.c.item_id == items.c.id))
            .where(sentiment)
            .group_by(items.c.model_version)
        ).all()
        return {
            "total": int(total),
            "topic_corrections": int(topics),
            "by_source": {k: int(v) for k, v in sorted(by_source.items())},
            "by_model_version": {
                v: {"labelled": int(n), "correct": int(c or 0), "accuracy": round((c or 0) / n, 4)}
                for v, n, c in sorted(per_version)
            },
        }
