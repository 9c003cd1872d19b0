"""Baseline: the store's tables as the releases before migrations made them.

On an empty database this creates them. On a store an earlier release wrote (its
tables, no ``alembic_version``) it adds only what that release lacked, as those
releases did on open: tables, nullable columns and indexes added since. Nothing
is dropped or rewritten. The definitions below are a frozen copy: later changes go
in later revisions, never here.

Revision ID: 0001_baseline
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

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


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    metadata.create_all(bind, checkfirst=True)  # the tables a store lacks, with their indexes
    for table in metadata.sorted_tables:
        if table.name not in existing:
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
        indexes = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
