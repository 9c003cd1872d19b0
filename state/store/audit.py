"""The audit log: who did what, and the audited switch of the serving model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from state.store.base import StoreBase
from state.store.schema import (
    as_utc,
    audit_log,
)


class AuditStore(StoreBase):
    """The audit log: who did what, and the audited switch of the serving model."""

    def audit(
        self,
        actor: str,
        action: str,
        target: str | None,
        reason: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Write one audit row (an action whose effect is not in this store)."""
        with self.audited(actor, action, target, reason, details):
            pass

    def has_audited_switch(self, token: str) -> bool:
        """Whether a committed promote or rollback row carries this switch token."""
        q = (
            sa.select(audit_log.c.details)
            .where(audit_log.c.action.in_(("promote", "rollback")))
            .order_by(audit_log.c.seq.desc())
            .limit(200)
        )
        with self.engine.connect() as conn:
            return any((d or {}).get("switch") == token for d in conn.execute(q).scalars())

    @contextmanager
    def audited(
        self,
        actor: str,
        action: str,
        target: str | None,
        reason: str | None,
        details: dict[str, Any] | None = None,
    ) -> Iterator[Connection]:
        """An operator action and its audit row as one step: the row first, then the block.

        Opens a transaction, inserts the audit row, runs the block (its effect;
        a database effect goes through the yielded connection, in the same
        transaction) and commits. If the insert fails the block never runs; if
        the block raises, the row is rolled back; if the commit fails, the
        error is raised for the caller to undo an effect outside the database.

        >>> from state.store import Store
        >>> store = Store("sqlite://")
        >>> with store.audited("ann", "promote", "v2", "better", {}):
        ...     pass  # switch the serving pointer here
        >>> [r["action"] for r in store.audit_rows()]
        ['promote']
        """
        with self.engine.begin() as conn:
            conn.execute(
                audit_log.insert().values(
                    ts=datetime.now(UTC),
                    actor=actor,
                    action=action,
                    target=target,
                    reason=reason,
                    details=details or {},
                )
            )
            yield conn

    def audit_rows(self, action: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        q = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        if action is not None:
            q = q.where(audit_log.c.action == action)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["ts"] = as_utc(r["ts"])
        return rows[::-1]
