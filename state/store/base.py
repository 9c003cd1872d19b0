"""The store's connection: the engine, in-place upgrades of older stores, and the probe."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from state.store.schema import (
    audit_log,
    item_entities,
    items,
    make_engine,
    metadata,
    rejected,
)


class StoreBase:
    """The store's connection: the engine, in-place upgrades of older stores, and the probe."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        if create:
            metadata.create_all(self.engine)
            self._ensure_indexes()

    def _ensure_indexes(self) -> None:
        """Columns and indexes added since a store was created (``create_all`` skips
        existing tables); nullable columns only, so an older store upgrades in place."""
        inspector = sa.inspect(self.engine)
        for table in (rejected,):
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have and column.nullable:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    with self.engine.begin() as conn:
                        conn.execute(
                            sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                        )
        for table in (items, item_entities):
            have = {ix["name"] for ix in inspector.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in have:
                    index.create(self.engine, checkfirst=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - guarded at construction
            raise ValueError(f"unsupported database: {self.dialect}")
        return insert(table).on_conflict_do_nothing()

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
                        ts=datetime.now(UTC), actor="probe", action="probe", details={}
                    )
                )
            finally:
                tx.rollback()
