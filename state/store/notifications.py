"""What each alert destination was told: one row per (alert episode, destination).

Every change is a claim: a conditional insert or update that only one caller can win
(the primary key, or a ``WHERE`` on the state it read), so two workers, or a worker and
its restarted self, never send the same message twice.

>>> from state.store import Store
>>> store = Store("sqlite://")
>>> store.open_notification("al-1", "chat", kind="slack", severity="warning", revision=1,
...                         title="negative_surge on ACME")
True
>>> store.open_notification("al-1", "chat", kind="slack", severity="warning", revision=1,
...                         title="negative_surge on ACME")  # told already
False
>>> store.advance_notification("al-1", "chat", expect_state="open", expect_severity="warning",
...                            state="open", severity="critical", revision=2)
True
>>> store.notification("al-1", "chat")["severity"]
'critical'
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from state.store.base import StoreBase
from state.store.schema import alert_notifications, alerts, as_utc


class NotificationsStore(StoreBase):
    """Claims on alert notifications (see the module docstring)."""

    def notification(self, alert_id: str, destination: str) -> dict[str, Any] | None:
        """What ``destination`` was last told of ``alert_id`` (None: nothing yet)."""
        t = alert_notifications
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(t).where(t.c.alert_id == alert_id, t.c.destination == destination)
                )
                .mappings()
                .one_or_none()
            )
        return dict(row) if row is not None else None

    def open_notification(
        self,
        alert_id: str,
        destination: str,
        *,
        kind: str,
        severity: str,
        revision: int,
        title: str,
    ) -> bool:
        """Claim the first message of an episode to a destination; False when it was claimed."""
        now = datetime.now(UTC)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    alert_notifications.insert().values(
                        alert_id=alert_id,
                        destination=destination,
                        kind=kind,
                        state="open",
                        severity=severity,
                        revision=revision,
                        title=title,
                        sent=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
            return True
        except sa.exc.IntegrityError:
            return False

    def advance_notification(
        self,
        alert_id: str,
        destination: str,
        *,
        expect_state: str,
        expect_severity: str,
        state: str,
        severity: str,
        revision: int,
        message: bool = True,
    ) -> bool:
        """Move a notification on from the state the caller read; False when another did.

        ``message`` says whether the move is a message sent (counted), or only a record
        (a revision with nothing new to say).
        """
        t = alert_notifications
        values: dict[str, Any] = {
            "state": state,
            "severity": severity,
            "revision": revision,
            "updated_at": datetime.now(UTC),
        }
        if message:
            values["sent"] = t.c.sent + 1
        with self.engine.begin() as conn:
            done = conn.execute(
                t.update()
                .where(
                    t.c.alert_id == alert_id,
                    t.c.destination == destination,
                    t.c.state == expect_state,
                    t.c.severity == expect_severity,
                    t.c.revision <= revision,  # never back to an older revision
                )
                .values(**values)
            ).rowcount
        return bool(done)

    def record_delivery(self, alert_id: str, destination: str, error: str | None) -> None:
        """The outcome of the last message (``error`` None: delivered)."""
        t = alert_notifications
        values: dict[str, Any] = {"last_error": error}
        if error is None:
            values["delivered_at"] = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.alert_id == alert_id, t.c.destination == destination)
                .values(**values)
            )

    def open_notifications(self, destination: str) -> list[dict[str, Any]]:
        """Episodes ``destination`` was told of and not yet told closed, with their alert.

        Each row: the notification's columns plus the alert's ``payload``, its newest
        ``window_end`` and ``muted_until`` (UTC).
        """
        t = alert_notifications
        q = (
            sa.select(t, alerts.c.payload, alerts.c.window_end, alerts.c.muted_until)
            .join(alerts, alerts.c.id == t.c.alert_id)
            .where(t.c.destination == destination, t.c.state == "open")
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        out = []
        for r in rows:
            row = dict(r)
            row["window_end"] = as_utc(row["window_end"])
            row["muted_until"] = as_utc(row["muted_until"])
            out.append(row)
        return out
