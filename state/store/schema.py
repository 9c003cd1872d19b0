"""The store's tables, one schema for SQLite and PostgreSQL, and the engine that opens it.

These are the tables at the newest migration (state/migrations/versions): a change here
needs a migration, and tests/moodwire/test_migrations.py checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

if TYPE_CHECKING:  # numpy is imported where it is used: `moodwire stats` needs none
    import numpy as np

metadata = sa.MetaData()


def _seq() -> sa.Column:
    """An autoincrementing sequence number: the order rows arrived in (readers catch up by it)."""
    return sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


items = sa.Table(
    "items",
    metadata,
    # seq orders items by arrival in the store: the index catches up by it.
    _seq(),
    sa.Column("id", sa.String(256), nullable=False, unique=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),  # ix_items_ts_scores leads with it
    sa.Column("source", sa.String(256)),
    sa.Column("entities", sa.JSON, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("label", sa.String(16), nullable=False, index=True),
    sa.Column("topic", sa.String(64), index=True),
    sa.Column("p_negative", sa.Float, nullable=False),
    sa.Column("p_neutral", sa.Float, nullable=False),
    sa.Column("p_positive", sa.Float, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False, index=True),
    sa.Column("neighbors", sa.JSON, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),  # float16, frozen space
    sa.Column("src_partition", sa.Integer),
    sa.Column("src_offset", sa.BigInteger),
    sa.Column("kafka_ts", sa.DateTime(timezone=True)),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("published", sa.Boolean, nullable=False, default=False),
    # Every event-time range query uses it, and it covers the dashboard's time-bucketed
    # aggregates (they read the index, not the rows); one index per item, as before.
    sa.Index("ix_items_ts_scores", "ts", "label", "p_positive", "p_negative"),
)
# The outbox's open entries: a handful in steady state, so counting them (``moodwire stats``)
# reads this small partial index, not every row.
sa.Index(
    "ix_items_unpublished",
    items.c.seq,
    sqlite_where=items.c.published.is_(False),
    postgresql_where=items.c.published.is_(False),
)

# One row per (item, entity): per-entity trends and alerts aggregate in SQL.
item_entities = sa.Table(
    "item_entities",
    metadata,
    sa.Column("item_id", sa.String(256), primary_key=True),
    sa.Column("entity", sa.String(64), primary_key=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("score", sa.Float, nullable=False),  # p_positive - p_negative
    sa.Index("ix_item_entities_entity_ts", "entity", "ts"),
    sa.Index("ix_item_entities_ts_scores", "ts", "entity", "score", "label"),
)

rejected = sa.Table(
    "rejected",
    metadata,
    _seq(),
    sa.Column("topic", sa.String(256), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.String(64), nullable=False, index=True),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),  # a readable preview
    sa.Column("raw_base64", sa.Text),  # the value itself, byte for byte (up to 64 KiB)
    sa.Column("raw_bytes", sa.Integer),  # its full length
    # sha256 of the value: finds the original on its topic when it is not kept (masking).
    sa.Column("raw_sha256", sa.String(64)),
    sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("published", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("topic", "partition", "offset", name="uq_rejected_position"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    _seq(),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(256)),
    sa.Column("reason", sa.Text),
    sa.Column("details", sa.JSON, nullable=False),
    # The hash chain (state.audit_chain): the row before's hash, and this row's. A unique
    # prev_hash means the chain cannot fork even if two writers slipped past the lock.
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("prev_hash", name="uq_audit_log_prev_hash"),
)


# -- access control: named users with roles, and failed sign-ins (rate limit) ------------
# Migration: state/migrations/versions/0003_users.py creates the same two tables.
users = sa.Table(
    "users",
    metadata,
    _seq(),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # viewer | analyst | operator | admin
    sa.Column("password_hash", sa.String(512)),  # Argon2id (PHC string); None: OIDC sign-in only
    sa.Column("email", sa.String(320)),  # the OIDC e-mail that maps to this user
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("name", name="uq_users_name"),
    sa.UniqueConstraint("email", name="uq_users_email"),
)

# One row per failed sign-in, shared by every dashboard replica: the lock-out counts them
# per user name and per client over a window. The password is never stored.
sign_in_failures = sa.Table(
    "sign_in_failures",
    metadata,
    _seq(),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("user_name", sa.String(64), nullable=False),
    sa.Column("client", sa.String(128), nullable=False),
    sa.Index("ix_sign_in_failures_user_ts", "user_name", "ts"),
    sa.Index("ix_sign_in_failures_client_ts", "client", "ts"),
)


labels = sa.Table(
    "labels",
    metadata,
    _seq(),
    # A stable hash of the label message: a label re-delivered by Kafka is stored once.
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("item_id", sa.String(256), index=True),  # joined to items.id at read time
    sa.Column("text", sa.Text),
    sa.Column("label", sa.String(16)),  # None: a topic correction only
    sa.Column("topic", sa.String(64)),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("annotator", sa.String(256)),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)

# Per source partition: the newest event time a worker stored from it, and whether the
# worker had read it to its end. The alert rules' watermark is the slowest partition
# with a backlog: Kafka orders items within a partition only.
partition_marks = sa.Table(
    "partition_marks",
    metadata,
    sa.Column("topic", sa.String(256), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("max_ts", sa.DateTime(timezone=True)),
    sa.Column("caught_up", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

alerts = sa.Table(
    "alerts",
    metadata,
    _seq(),
    # A hash of the key and the episode's first window: every worker computes the same.
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("kind", sa.String(32), nullable=False, index=True),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("entity", sa.String(64), index=True),
    sa.Column("topic", sa.String(64), index=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("first_window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("statistic", sa.Float, nullable=False),
    sa.Column("baseline", sa.Float, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),  # the whole alert, as published
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("acknowledged_by", sa.String(256)),
    sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
    sa.Column("muted_until", sa.DateTime(timezone=True)),
)

# What each alert destination was told of each alert episode, so that an episode notifies
# once when it opens and then only when its severity changes or it closes, and a restarted
# (or second) worker does not tell it again. One row per (alert, destination); the
# destination is named by its configured name or a hash of its URL, never the URL.
alert_notifications = sa.Table(
    "alert_notifications",
    metadata,
    sa.Column("alert_id", sa.String(64), primary_key=True),
    sa.Column("destination", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),  # slack, teams, pagerduty, email, webhook, …
    sa.Column("state", sa.String(16), nullable=False),  # open | closed
    sa.Column("severity", sa.String(16), nullable=False),  # the severity last announced
    sa.Column("revision", sa.Integer, nullable=False),  # the alert revision last announced
    sa.Column("title", sa.Text, nullable=False),  # the first message's title: updates reuse it
    sa.Column("sent", sa.Integer, nullable=False),  # messages claimed for it so far
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),  # the last message delivered
    sa.Column("last_error", sa.Text),  # why the last message failed (no URL), None if it did not
    sa.Index("ix_alert_notifications_open", "destination", "state"),
)

drift_events = sa.Table(
    "drift_events",
    metadata,
    _seq(),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("detector", sa.String(64), nullable=False),
    sa.Column("signal", sa.String(64), nullable=False),  # what was watched
    sa.Column("statistic", sa.Float, nullable=False),
    sa.Column("window", sa.Integer, nullable=False),  # items the detector looks back over
    sa.Column("position", sa.BigInteger, nullable=False),  # items its emitter had seen
    sa.Column("origin", sa.String(256), nullable=False),  # worker:<id> or learner
    sa.Column("model_version", sa.String(64)),
    sa.Column("details", sa.JSON, nullable=False),
)


# Alembic's own table (state.migrations writes it): declared here so that
# ``metadata.drop_all`` clears a store whole, and the next open builds it afresh.
alembic_version = sa.Table(
    "alembic_version",
    metadata,
    sa.Column("version_num", sa.String(32), primary_key=True),
)

# -- the shared model registry (state/shared_registry.py), for workers on several hosts ---
# A version is one row and its files' chunks, written in one transaction (never half);
# the serving pointer is one row, its generation bumped on every write (what workers watch).
registry_versions = sa.Table(
    "registry_versions",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),  # v1, v2, ...
    sa.Column("number", sa.Integer, nullable=False, unique=True),
    sa.Column("card", sa.JSON, nullable=False),  # with "files": sha256 and size of each
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

registry_files = sa.Table(
    "registry_files",
    metadata,
    sa.Column(
        "version",
        sa.String(32),
        sa.ForeignKey("registry_versions.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("path", sa.String(512), primary_key=True),  # relative POSIX path
    sa.Column("chunk", sa.Integer, primary_key=True),  # 0, 1, ... (a few MiB each)
    sa.Column("data", sa.LargeBinary, nullable=False),
)

registry_pointer = sa.Table(
    "registry_pointer",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1: one registry per database
    sa.Column("version", sa.String(32), sa.ForeignKey("registry_versions.name")),
    sa.Column("history", sa.JSON, nullable=False),
    sa.Column("switch", sa.JSON),  # the audit token of the last switch and what it replaced
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def as_utc(dt: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; everything in the store is UTC.
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def encode_embedding(vector: np.ndarray) -> bytes:
    return vector.astype("float16").tobytes()  # the scoring loop's: no import per item


def decode_embeddings(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    import numpy as np

    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return (
        np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(len(blobs), dim).astype(np.float32)
    )


def first_of_each(rows: Iterable[dict[str, Any]], key: str = "id") -> list[dict[str, Any]]:
    """The first row of each ``key``, in their order (a batch may repeat one).

    >>> first_of_each([{"id": 1, "v": "a"}, {"id": 2}, {"id": 1, "v": "b"}])
    [{'id': 1, 'v': 'a'}, {'id': 2}]
    """
    seen: dict[Any, dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(row[key], row)
    return list(seen.values())


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith(("postgresql", "postgres")):
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        # A connection attempt to a vanished server fails in seconds, not minutes: the
        # callers wait outages out themselves (stream.outage), with backoff.
        return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    raise ValueError(
        f"unsupported store URL {url.split('://')[0]}://…; use sqlite:///PATH or postgresql://…"
    )
