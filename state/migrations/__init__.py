"""The store's schema migrations (Alembic), run when a store opens or by ``moodwire store upgrade``.

Revisions live in ``versions/``, one file each, named after their revision id
(``0001_baseline.py`` holds ``revision = "0001_baseline"``), in one line: each
``down_revision`` is the file before it. ``0001_baseline`` is the schema of the
releases before migrations; a store they wrote (its tables, no ``alembic_version``)
is brought to it in place and upgraded from there, nothing lost.

:func:`upgrade` takes a lock first (PostgreSQL: an advisory lock; SQLite: the
write lock, ``BEGIN IMMEDIATE``) and runs every step in that one transaction, so
two processes opening a new store at once migrate it once, and a failed step
leaves the store as it was.

>>> import sqlalchemy as sa
>>> engine = sa.create_engine("sqlite://")
>>> upgrade(engine).after == head()
True
>>> current(engine) == head()
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

VERSIONS = Path(__file__).parent / "versions"
BASELINE = "0001_baseline"
# pg_advisory_xact_lock's key for "migrating this database" (any fixed bigint; this
# one is the first 8 bytes of sha256("moodwire.migrations"), so it collides with nothing).
MIGRATION_LOCK = 0x3D6E1C0A5B2F7713


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` did: the revision before (None: a new or pre-migration store),
    the revision after, and whether the store was written by a release before migrations."""

    before: str | None
    after: str | None
    adopted: bool

    @property
    def changed(self) -> bool:
        return self.before != self.after


def head() -> str:
    """The newest revision: the last file of ``versions/`` (the convention a test checks)."""
    return max(p.stem for p in VERSIONS.glob("[0-9]*.py"))


def current(engine: Engine | Connection) -> str | None:
    """The store's revision; None for an empty store or one from before migrations."""
    if isinstance(engine, Engine):
        with engine.connect() as conn:
            return current(conn)
    if not sa.inspect(engine).has_table("alembic_version"):
        return None
    return engine.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, target: str = "head") -> Upgrade:
    """Bring the store to ``target`` (the newest by default), under the migration lock.

    A store already there costs one query and takes no lock.
    """
    if target == "head":
        try:
            now = current(engine)
        except sa.exc.OperationalError:  # SQLite locked by a migration in progress
            now = None
        if now == head():
            return Upgrade(now, now, adopted=False)
    with engine.begin() as conn:
        _lock(conn)
        before = current(conn)  # again, under the lock: another process may have done it
        adopted = before is None and sa.inspect(conn).has_table("items")
        _alembic_upgrade(conn, target)
        after = current(conn)
    return Upgrade(before, after, adopted)


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        # Released at commit or rollback, so a crashed migration frees it too.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
    elif conn.dialect.name == "sqlite":
        # The write lock, now: a second opener waits (busy_timeout) and then finds the
        # work done. The DDL runs inside this transaction (SQLite's DDL is transactional).
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:  # pragma: no cover - make_engine refuses other databases
        raise ValueError(f"unsupported database: {conn.dialect.name}")


def _alembic_upgrade(conn: Connection, target: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = conn
    command.upgrade(config, target)
