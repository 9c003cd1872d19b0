"""The audit log: who did what, hash-chained (state.audit_chain), and audited actions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from state.audit_chain import GENESIS, ChainCheck, canonical_details, row_hash, verify_chain
from state.store.base import StoreBase
from state.store.schema import (
    as_utc,
    audit_log,
)

# pg_advisory_xact_lock's key for "appending to the audit chain" (a fixed bigint, apart
# from state.migrations.MIGRATION_LOCK).
AUDIT_CHAIN_LOCK = 0x5A3C0F1E9B2D4471
SEQUENCE = "pg_get_serial_sequence('audit_log', 'seq')"


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
            self._append_audit_row(conn, actor, action, target, reason, details)
            yield conn

    def _append_audit_row(
        self,
        conn: Connection,
        actor: str,
        action: str,
        target: str | None,
        reason: str | None,
        details: dict[str, Any] | None,
    ) -> None:
        """Link a row to the chain's end, holding the chain's lock until ``conn`` commits.

        The lock comes first, before the last row is read, so two writers can never
        both link to the same row (the unique ``prev_hash`` would refuse the second).
        """
        if self.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(AUDIT_CHAIN_LOCK)))
        else:
            # The write lock, now (the first statement of this transaction): a deferred
            # one would read the end of the chain before another writer's commit.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        last = conn.execute(
            sa.select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
        ).first()
        # seq is drawn before the insert, under the lock, so the hash can cover it.
        if self.dialect == "postgresql":  # from the column's own sequence (others use it too)
            seq = conn.execute(sa.text(f"SELECT nextval({SEQUENCE})")).scalar_one()
            if last is not None and seq <= last.seq:  # rows restored with their seq, say
                seq = last.seq + 1
                conn.execute(sa.text(f"SELECT setval({SEQUENCE}, :seq)"), {"seq": seq})
        else:  # what SQLite's rowid would give: one past the end
            seq = (last.seq if last else 0) + 1
        row = {
            "seq": int(seq),
            "ts": datetime.now(UTC),
            "actor": actor,
            "action": action,
            "target": target,
            "reason": reason,
            "details": canonical_details(details),
            "prev_hash": last.hash if last else GENESIS,
        }
        conn.execute(audit_log.insert().values(**row, hash=row_hash(row)))

    def verify_audit(self, expect: tuple[int, str] | None = None) -> ChainCheck:
        """Check the audit log's hash chain from its first row (``moodwire audit verify``).

        ``expect``: a ``(seq, hash)`` noted earlier that must still be there (a chain
        alone cannot show rows cut off its end).

        >>> from state.store import Store
        >>> store = Store("sqlite://")
        >>> store.audit("ann", "promote", "v2", "better", {})
        >>> store.verify_audit().count, store.verify_audit().intact
        (1, True)
        """
        q = sa.select(audit_log).order_by(audit_log.c.seq)
        with self.engine.connect() as conn:
            rows = conn.execution_options(yield_per=1000).execute(q).mappings()
            return verify_chain(rows, expect=expect)

    def audit_rows(self, action: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        q = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        if action is not None:
            q = q.where(audit_log.c.action == action)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["ts"] = as_utc(r["ts"])
        return rows[::-1]
