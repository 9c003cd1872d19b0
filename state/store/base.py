"""The store's connection: the engine, its schema migrations on open, and the probe."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from state import migrations
from state.store.schema import audit_log, make_engine


class StoreBase:
    """The store's connection: the engine, its schema migrations on open, and the probe."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """Open the store at ``url``; with ``create`` (the default), build or upgrade its
        tables to the newest migration first (state.migrations; one query when they are)."""
        self.url = url
        self.engine: Engine = make_engine(url)
        if create:
            migrations.upgrade(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _upsert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_update`` / ``_do_nothing``."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - guarded at construction
            raise ValueError(f"unsupported database: {self.dialect}")
        return insert(table)

    def _insert(self, table: sa.Table) -> Any:
        """INSERT that skips rows already there (on any unique key)."""
        return self._upsert(table).on_conflict_do_nothing()

    def probe(self) -> None:
        """Write a row and roll it back: raises whatever stops writes now (an outage).

        Tells a write that fails because of its own data from one that fails
        because the store does: if this works, the store does.
        """
        with self.engine.connect() as conn:
            tx = conn.begin()
            try:
                conn.execute(
                    audit_log.insert().values(
                        ts=datetime.now(UTC),
                        actor="probe",
                        action="probe",
                        details={},
                        # Outside the chain (rolled back): a link no real row claims.
                        prev_hash=uuid.uuid4().hex,
                        hash=uuid.uuid4().hex,
                    )
                )
            finally:
                tx.rollback()
