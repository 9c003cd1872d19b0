"""Alerts: idempotent upserts, acknowledgements and mutes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from state.store.base import StoreBase
from state.store.schema import (
    alerts,
    as_utc,
)


class AlertsStore(StoreBase):
    """Alerts: idempotent upserts, acknowledgements and mutes."""

    def upsert_alert(self, alert: dict[str, Any]) -> bool:
        """Store an alert or a newer revision of it; False when it was there already.

        Several workers compute the same alerts: the first to store a revision is the
        one that announces it.
        """
        now = datetime.now(UTC)
        row = {
            "id": alert["id"],
            "kind": alert["kind"],
            "scope": alert["scope"],
            "entity": alert.get("entity"),
            "topic": alert.get("topic"),
            "severity": alert["severity"],
            "window_start": datetime.fromisoformat(alert["window_start"]),
            "window_end": datetime.fromisoformat(alert["window_end"]),
            "first_window_start": datetime.fromisoformat(alert["first_window_start"]),
            "statistic": float(alert["statistic"]),
            "baseline": float(alert["baseline"]),
            "revision": int(alert["revision"]),
            "payload": alert,
            "updated_at": now,
        }
        insert = self._upsert(alerts).values(**row, created_at=now)
        # A newer revision replaces the stored one (not its acknowledgement or mute); an
        # equal or older one changes nothing, and RETURNING then gives no row.
        stmt = insert.on_conflict_do_update(
            index_elements=[alerts.c.id],
            set_={k: insert.excluded[k] for k in row if k != "id"},
            where=alerts.c.revision < insert.excluded.revision,
        ).returning(alerts.c.seq)
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    def alert_rows(
        self,
        *,
        since: datetime | None = None,
        entity: str | None = None,
        kind: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Alerts, newest window first: each its stored payload plus its acknowledgement."""
        q = sa.select(alerts).order_by(alerts.c.window_end.desc(), alerts.c.seq.desc())
        if since is not None:
            q = q.where(alerts.c.window_end >= since)
        if entity is not None:
            q = q.where(sa.func.upper(alerts.c.entity) == entity.upper().lstrip("$"))
        if kind is not None:
            q = q.where(alerts.c.kind == kind)
        with self.engine.connect() as conn:
            rows = conn.execute(q.limit(limit)).mappings().all()
        return [_with_state(r) for r in rows]

    def alert_row(self, alert_id: str) -> dict[str, Any] | None:
        """One alert as :meth:`alert_rows` gives it (None: no such alert)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(alerts).where(alerts.c.id == alert_id)).mappings().first()
        return _with_state(row) if row is not None else None

    def acknowledge_alert(self, alert_id: str, actor: str) -> bool:
        """Mark an alert seen by ``actor``; False when no such alert."""
        with self.engine.begin() as conn:
            done = conn.execute(
                alerts.update()
                .where(alerts.c.id == alert_id)
                .values(acknowledged_by=actor, acknowledged_at=datetime.now(UTC))
            ).rowcount
        return bool(done)

    def acknowledge_alert_in(self, conn: Connection, alert_id: str, actor: str) -> bool:
        """:meth:`acknowledge_alert` inside the caller's transaction (e.g. :meth:`audited`'s)."""
        done = conn.execute(
            alerts.update()
            .where(alerts.c.id == alert_id)
            .values(acknowledged_by=actor, acknowledged_at=datetime.now(UTC))
        ).rowcount
        return bool(done)

    def alert_muted(self, alert_id: str, now: datetime | None = None) -> bool:
        """Whether an operator muted this alert's episode until after ``now``."""
        with self.engine.connect() as conn:
            until = conn.execute(
                sa.select(alerts.c.muted_until).where(alerts.c.id == alert_id)
            ).scalar_one_or_none()
        return until is not None and as_utc(until) > (now or datetime.now(UTC))

    def mute_alert(self, alert_id: str, until: datetime | None) -> bool:
        """Hide an alert's episode from the live feed until ``until`` (None: unmute)."""
        with self.engine.begin() as conn:
            done = conn.execute(
                alerts.update().where(alerts.c.id == alert_id).values(muted_until=until)
            ).rowcount
        return bool(done)

    def mute_alert_in(self, conn: Connection, alert_id: str, until: datetime | None) -> bool:
        """:meth:`mute_alert` inside the caller's transaction (e.g. :meth:`audited`'s)."""
        done = conn.execute(
            alerts.update().where(alerts.c.id == alert_id).values(muted_until=until)
        ).rowcount
        return bool(done)


def _with_state(r: Any) -> dict[str, Any]:
    """An alert's stored payload plus its acknowledgement and mute."""
    payload = dict(r["payload"])
    payload["acknowledged_by"] = r["acknowledged_by"]
    ack = as_utc(r["acknowledged_at"])
    payload["acknowledged_at"] = ack.isoformat() if ack else None
    muted = as_utc(r["muted_until"])
    payload["muted_until"] = muted.isoformat() if muted else None
    return payload
