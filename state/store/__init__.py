"""The store: items, labels, alerts, drift events and the audit log, in SQL (SQLAlchemy Core).

One class per concern (``items``, ``labels``, ``alerts``, ``notifications``, ``drift``, ``audit``, ``users``; the tables
in ``schema``), composed into the one ``Store`` every process opens.

SQLite (WAL) is the embedded default; PostgreSQL by URL for production. Writes
are idempotent on the item id, and each row doubles as an outbox entry: it is
written with ``published = false`` before it is sent to Kafka and flagged once
the broker has acknowledged it, so a crash in between is repaired on replay.

>>> store = Store("sqlite://")
>>> store.stats()["items"]
0
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from state.store.alerts import AlertsStore
from state.store.audit import AuditStore
from state.store.drift import DriftStore
from state.store.items import ItemsStore
from state.store.labels import LabelsStore
from state.store.notifications import NotificationsStore
from state.store.schema import (
    alert_notifications,
    alerts,
    as_utc,
    audit_log,
    decode_embeddings,
    drift_events,
    encode_embedding,
    item_entities,
    items,
    labels,
    metadata,
    partition_marks,
    rejected,
    sign_in_failures,
    users,
)
from state.store.users import UsersStore

__all__ = [
    "Store",
    "alert_notifications",
    "alerts",
    "audit_log",
    "decode_embeddings",
    "drift_events",
    "encode_embedding",
    "item_entities",
    "items",
    "labels",
    "metadata",
    "partition_marks",
    "rejected",
    "sign_in_failures",
    "users",
]


class Store(
    ItemsStore, LabelsStore, AlertsStore, NotificationsStore, DriftStore, AuditStore, UsersStore
):
    """Scored items and rejections, with idempotent writes; labels, alerts and what was
    notified of them, drift, audit, users."""

    def stats(self) -> dict[str, Any]:
        """Counts for ``moodwire stats``."""
        with self.engine.connect() as conn:
            n_items = conn.execute(sa.select(sa.func.count()).select_from(items)).scalar_one()
            n_rej = conn.execute(sa.select(sa.func.count()).select_from(rejected)).scalar_one()
            by_label = dict(
                conn.execute(
                    sa.select(items.c.label, sa.func.count()).group_by(items.c.label)
                ).all()
            )
            by_version = dict(
                conn.execute(
                    sa.select(items.c.model_version, sa.func.count()).group_by(
                        items.c.model_version
                    )
                ).all()
            )
            by_reason = dict(
                conn.execute(
                    sa.select(rejected.c.reason, sa.func.count()).group_by(rejected.c.reason)
                ).all()
            )
            unpublished = conn.execute(
                sa.select(sa.func.count()).select_from(items).where(items.c.published.is_(False))
            ).scalar_one()
            # The newest row's, by arrival order: the primary key, not a scan of every row.
            last = conn.execute(
                sa.select(items.c.stored_at).order_by(items.c.seq.desc()).limit(1)
            ).scalar_one_or_none()
            label_stats = self._label_stats(conn)
            drift_by_detector = dict(
                conn.execute(
                    sa.select(drift_events.c.detector, sa.func.count()).group_by(
                        drift_events.c.detector
                    )
                ).all()
            )
            last_drift = conn.execute(sa.select(sa.func.max(drift_events.c.ts))).scalar_one()
            alert_kinds = dict(
                conn.execute(
                    sa.select(alerts.c.kind, sa.func.count()).group_by(alerts.c.kind)
                ).all()
            )
            alert_severity = dict(
                conn.execute(
                    sa.select(alerts.c.severity, sa.func.count()).group_by(alerts.c.severity)
                ).all()
            )
            last_alert = conn.execute(sa.select(sa.func.max(alerts.c.window_end))).scalar_one()
            unacked = conn.execute(
                sa.select(sa.func.count())
                .select_from(alerts)
                .where(alerts.c.acknowledged_at.is_(None))
            ).scalar_one()
            actions = dict(
                conn.execute(
                    sa.select(audit_log.c.action, sa.func.count()).group_by(audit_log.c.action)
                ).all()
            )
        return {
            "items": int(n_items),
            "rejected": int(n_rej),
            "by_label": {k: int(v) for k, v in sorted(by_label.items())},
            "by_model_version": {k: int(v) for k, v in sorted(by_version.items())},
            "rejected_by_reason": {k: int(v) for k, v in sorted(by_reason.items())},
            "unpublished": int(unpublished),
            "last_stored_at": as_utc(last).isoformat() if last else None,
            "labels": label_stats,
            "drift_events": {
                "total": int(sum(drift_by_detector.values())),
                "by_detector": {k: int(v) for k, v in sorted(drift_by_detector.items())},
                "last_at": as_utc(last_drift).isoformat() if last_drift else None,
            },
            "alerts": {
                "total": int(sum(alert_kinds.values())),
                "unacknowledged": int(unacked),
                "by_kind": {k: int(v) for k, v in sorted(alert_kinds.items())},
                "by_severity": {k: int(v) for k, v in sorted(alert_severity.items())},
                "last_window_end": as_utc(last_alert).isoformat() if last_alert else None,
            },
            "promotions": {
                "promoted": int(actions.get("promote", 0)),
                "rolled_back": int(actions.get("rollback", 0)),
                "candidates_rejected": int(actions.get("candidate_rejected", 0)),
                "awaiting_approval": int(actions.get("candidate_awaiting_approval", 0)),
            },
        }
