"""Drift events, as detectors and the learner record them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from state.store.base import StoreBase
from state.store.schema import (
    as_utc,
    drift_events,
)


class DriftStore(StoreBase):
    """Drift events, as detectors and the learner record them."""

    def record_drift(self, event: dict[str, Any]) -> int:
        """Store one drift event; returns its sequence number."""
        row = {"details": {}, "model_version": None, **event}
        row.setdefault("ts", datetime.now(UTC))
        with self.engine.begin() as conn:
            return int(conn.execute(drift_events.insert().values(**row)).inserted_primary_key[0])

    def drift_events_after(self, seq: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(drift_events).where(drift_events.c.seq > seq).order_by(drift_events.c.seq)
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["ts"] = as_utc(r["ts"])
        return rows

    def last_drift_seq(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(drift_events.c.seq))).scalar() or 0)

    def drift_event_rows(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(drift_events).order_by(drift_events.c.seq.desc()).limit(limit)
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["ts"] = as_utc(r["ts"])
        return rows[::-1]
