"""The store: scored items, rejections and the audit log, in SQL (SQLAlchemy Core).

SQLite (WAL) is the embedded default; PostgreSQL by URL for production. Writes
are idempotent on the item id, and each row doubles as an outbox entry: it is
written with ``published = false`` before it is sent to Kafka and flagged once
the broker has acknowledged it, so a crash in between is repaired on replay.

>>> store = Store("sqlite://")
>>> store.stats()["items"]
0
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

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


def _utc(dt: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; everything in the store is UTC.
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def encode_embedding(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float16).tobytes()


def decode_embeddings(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return (
        np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(len(blobs), dim).astype(np.float32)
    )


class Store:
    """Scored items and rejections, with idempotent writes."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url)
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

    # -- writes ---------------------------------------------------------------------------

    def write_batch(
        self, scored: list[dict[str, Any]], rejections: list[dict[str, Any]]
    ) -> tuple[set[str], set[str], list[int]]:
        """Insert a batch idempotently, in one transaction.

        Returns ``(new_ids, replayed_unpublished_ids, rejection_seqs_to_publish)``:
        items written now, items that were written by an earlier attempt that
        crashed before it was acknowledged by Kafka (the caller must check the
        topic before re-publishing them), and rejections still to publish.
        """
        now = datetime.now(UTC)
        ids = [row["id"] for row in scored]
        with self.engine.begin() as conn:
            before: dict[str, bool] = {}
            for chunk in _chunks(ids, 500):
                q = sa.select(items.c.id, items.c.published).where(items.c.id.in_(chunk))
                before.update({r.id: bool(r.published) for r in conn.execute(q)})
            fresh = [
                dict(row, stored_at=now, published=False)
                for row in scored
                if row["id"] not in before
            ]
            if fresh:
                conn.execute(self._insert(items), fresh)
                tags = [
                    {
                        "item_id": row["id"],
                        "entity": entity,
                        "ts": row["ts"],
                        "label": row["label"],
                        "score": row["p_positive"] - row["p_negative"],
                    }
                    for row in fresh
                    for entity in dict.fromkeys(row.get("entities") or ())
                ]
                if tags:
                    conn.execute(self._insert(item_entities), tags)
            replayed = {i for i, published in before.items() if not published}
            rej_seqs: list[int] = []
            if rejections:
                conn.execute(self._insert(rejected), [dict(r, published=False) for r in rejections])
                for r in rejections:
                    q = sa.select(rejected.c.seq).where(
                        rejected.c.topic == r["topic"],
                        rejected.c.partition == r["partition"],
                        rejected.c.offset == r["offset"],
                        rejected.c.published.is_(False),
                    )
                    rej_seqs.extend(conn.execute(q).scalars())
        return {row["id"] for row in fresh}, replayed, rej_seqs

    def mark_published(
        self, item_ids: Iterable[str] = (), rejection_seqs: Iterable[int] = ()
    ) -> None:
        item_ids, rejection_seqs = list(item_ids), list(rejection_seqs)
        with self.engine.begin() as conn:
            for chunk in _chunks(item_ids, 500):
                conn.execute(items.update().where(items.c.id.in_(chunk)).values(published=True))
            for chunk in _chunks(rejection_seqs, 500):
                conn.execute(
                    rejected.update().where(rejected.c.seq.in_(chunk)).values(published=True)
                )

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

    def dead_letter_items(self, ids: Sequence[str], rejections: list[dict[str, Any]]) -> list[int]:
        """Move stored items that cannot be published into ``rejected``, in one transaction.

        Returns the rejections' sequence numbers (to publish on the dead-letter topic).
        """
        with self.engine.begin() as conn:
            for chunk in _chunks(list(ids), 500):
                conn.execute(item_entities.delete().where(item_entities.c.item_id.in_(chunk)))
                conn.execute(items.delete().where(items.c.id.in_(chunk)))
            if rejections:
                conn.execute(self._insert(rejected), [dict(r, published=False) for r in rejections])
            seqs: list[int] = []
            for r in rejections:
                q = sa.select(rejected.c.seq).where(
                    rejected.c.topic == r["topic"],
                    rejected.c.partition == r["partition"],
                    rejected.c.offset == r["offset"],
                )
                seqs.extend(conn.execute(q).scalars())
        return seqs

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

    def add_labels(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store labels idempotently (on their ``id``); returns the rows that were new."""
        if not rows:
            return []
        with self.engine.begin() as conn:
            return self.add_labels_in(conn, rows)

    def add_labels_in(self, conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`add_labels` inside the caller's transaction (e.g. :meth:`audited`'s)."""
        now = datetime.now(UTC)
        known: set[str] = set()
        for chunk in _chunks([r["id"] for r in rows], 500):
            known.update(
                conn.execute(sa.select(labels.c.id).where(labels.c.id.in_(chunk))).scalars()
            )
        fresh, seen = [], set()
        for r in rows:
            if r["id"] in known or r["id"] in seen:
                continue
            seen.add(r["id"])
            fresh.append(dict(r, received_at=now))
        if fresh:
            conn.execute(self._insert(labels), fresh)
        return fresh

    def record_drift(self, event: dict[str, Any]) -> int:
        """Store one drift event; returns its sequence number."""
        row = {"details": {}, "model_version": None, **event}
        row.setdefault("ts", datetime.now(UTC))
        with self.engine.begin() as conn:
            return int(conn.execute(drift_events.insert().values(**row)).inserted_primary_key[0])

    def mark_partitions(self, marks: list[dict[str, Any]]) -> None:
        """Record, per ``(topic, partition)``, the newest event time stored and ``caught_up``."""
        if not marks:
            return
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            for m in marks:
                key = (partition_marks.c.topic == m["topic"]) & (
                    partition_marks.c.partition == m["partition"]
                )
                old = conn.execute(sa.select(partition_marks.c.max_ts).where(key)).scalar()
                old = _utc(old)
                new = m.get("max_ts")
                max_ts = max(x for x in (old, new) if x is not None) if (old or new) else None
                values = {"max_ts": max_ts, "caught_up": bool(m["caught_up"]), "updated_at": now}
                if conn.execute(partition_marks.update().where(key).values(**values)).rowcount:
                    continue
                try:
                    with conn.begin_nested():
                        conn.execute(
                            partition_marks.insert().values(
                                topic=m["topic"], partition=m["partition"], **values
                            )
                        )
                except sa.exc.IntegrityError:  # another worker inserted it just now
                    conn.execute(partition_marks.update().where(key).values(**values))

    def partition_mark_rows(self, topic: str) -> list[dict[str, Any]]:
        q = sa.select(partition_marks).where(partition_marks.c.topic == topic)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["max_ts"], r["updated_at"] = _utc(r["max_ts"]), _utc(r["updated_at"])
        return rows

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
        try:
            with self.engine.begin() as conn:
                have = conn.execute(
                    sa.select(alerts.c.revision).where(alerts.c.id == row["id"])
                ).scalar_one_or_none()
                if have is None:
                    conn.execute(alerts.insert().values(**row, created_at=now))
                    return True
                if have >= row["revision"]:
                    return False
                conn.execute(
                    alerts.update()
                    .where(alerts.c.id == row["id"], alerts.c.revision < row["revision"])
                    .values(**row)
                )
                return True
        except sa.exc.IntegrityError:  # another worker stored it in the same instant
            return False

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
        out = []
        for r in rows:
            payload = dict(r["payload"])
            payload["acknowledged_by"] = r["acknowledged_by"]
            ack = _utc(r["acknowledged_at"])
            payload["acknowledged_at"] = ack.isoformat() if ack else None
            muted = _utc(r["muted_until"])
            payload["muted_until"] = muted.isoformat() if muted else None
            out.append(payload)
        return out

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
        return until is not None and _utc(until) > (now or datetime.now(UTC))

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

    # -- reads ----------------------------------------------------------------------------

    def items_for_alerts(self, after_seq: int, limit: int = 5000) -> list[dict[str, Any]]:
        """What the alert rules need of items stored after ``after_seq``, in order."""
        cols = (
            items.c.seq,
            items.c.id,
            items.c.ts,
            items.c.entities,
            items.c.topic,
            items.c.label,
            items.c.p_negative,
            items.c.p_positive,
            items.c.text,
            items.c.model_version,
        )
        with self.engine.connect() as conn:
            q = sa.select(*cols).where(items.c.seq > after_seq).order_by(items.c.seq).limit(limit)
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["ts"] = _utc(r["ts"])
        return rows

    def first_seq_since(self, ts: datetime) -> int:
        """The sequence number just before the first item with an event time at or after ``ts``."""
        with self.engine.connect() as conn:
            seq = conn.execute(sa.select(sa.func.min(items.c.seq)).where(items.c.ts >= ts)).scalar()
            last = conn.execute(sa.select(sa.func.max(items.c.seq))).scalar()
        if seq is None:
            return int(last or 0)
        return int(seq) - 1

    def latest_item_ts(self) -> datetime | None:
        with self.engine.connect() as conn:
            return _utc(conn.execute(sa.select(sa.func.max(items.c.ts))).scalar())

    def drift_events_after(self, seq: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(drift_events).where(drift_events.c.seq > seq).order_by(drift_events.c.seq)
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["ts"] = _utc(r["ts"])
        return rows

    def last_drift_seq(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(drift_events.c.seq))).scalar() or 0)

    def items_by_ids(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``id -> {text, label, model_version, confidence, ts, entities, topic}`` of stored ones."""
        out: dict[str, dict[str, Any]] = {}
        cols = (
            items.c.id,
            items.c.text,
            items.c.label,
            items.c.model_version,
            items.c.confidence,
            items.c.ts,
            items.c.entities,
            items.c.topic,
        )
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids), 500):
                for r in conn.execute(sa.select(*cols).where(items.c.id.in_(chunk))).mappings():
                    out[r["id"]] = dict(r, ts=_utc(r["ts"]))
        return out

    def embeddings_by_ids(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The stored ones among ``ids`` (in the order given) and their frozen-space embeddings."""
        found: dict[str, bytes] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids), 500):
                q = sa.select(items.c.id, items.c.embedding).where(items.c.id.in_(chunk))
                found.update(dict(conn.execute(q).all()))
        order = [i for i in dict.fromkeys(ids) if i in found]
        if not order:
            return [], np.zeros((0, 0), dtype=np.float32)
        blobs = [found[i] for i in order]
        return order, decode_embeddings(blobs, len(blobs[0]) // 2)

    def topic_corrections(self, after_seq: int = 0) -> list[dict[str, Any]]:
        """Analysts' topic corrections by item id, in arrival order (``seq, item_id, topic``)."""
        q = (
            sa.select(labels.c.seq, labels.c.item_id, labels.c.topic)
            .where(labels.c.seq > after_seq, labels.c.topic.is_not(None))
            .where(labels.c.item_id.is_not(None))
            .order_by(labels.c.seq)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def recent_texts(self, n: int) -> list[str]:
        """The texts of the last ``n`` items stored (for shadow-scoring a candidate)."""
        with self.engine.connect() as conn:
            q = sa.select(items.c.text).order_by(items.c.seq.desc()).limit(n)
            return list(conn.execute(q).scalars())[::-1]

    def labels_after(self, seq: int, limit: int = 10_000) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(labels).where(labels.c.seq > seq).order_by(labels.c.seq).limit(limit)
            return [dict(r) for r in conn.execute(q).mappings()]

    def drift_event_rows(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(drift_events).order_by(drift_events.c.seq.desc()).limit(limit)
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["ts"] = _utc(r["ts"])
        return rows[::-1]

    def audit_rows(self, action: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        q = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        if action is not None:
            q = q.where(audit_log.c.action == action)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["ts"] = _utc(r["ts"])
        return rows[::-1]

    def count_items(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(items)).scalar_one())

    def item_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(items.c.id).order_by(items.c.seq)).scalars())

    def get_item(self, item_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(items).where(items.c.id == item_id)).mappings().first()
        if row is None:
            return None
        out = dict(row)
        for key in ("ts", "kafka_ts", "scored_at", "stored_at"):
            out[key] = _utc(out[key])
        return out

    def rejections(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(rejected).order_by(rejected.c.seq)
            return [dict(r) for r in conn.execute(q).mappings()]

    def rejections_by_seq(self, seqs: Sequence[int]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(rejected).where(rejected.c.seq.in_(list(seqs)))
            return [dict(r) for r in conn.execute(q).mappings()]

    def embeddings_after(
        self, seq: int, limit: int = 10_000, *, with_embedding: bool = True
    ) -> Iterator[tuple[int, str, str, bytes | None]]:
        """``(seq, id, label, embedding)`` of items stored after ``seq``, in order."""
        vector = items.c.embedding if with_embedding else sa.null()
        with self.engine.connect() as conn:
            q = (
                sa.select(items.c.seq, items.c.id, items.c.label, vector)
                .where(items.c.seq > seq)
                .order_by(items.c.seq)
                .limit(limit)
            )
            yield from (tuple(r) for r in conn.execute(q))

    def latencies_ms(self, id_prefix: str = "") -> np.ndarray:
        """Produce-to-stored latency of items with a Kafka timestamp (ids starting with a prefix)."""
        q = sa.select(items.c.kafka_ts, items.c.stored_at).where(items.c.kafka_ts.is_not(None))
        if id_prefix:
            q = q.where(items.c.id.startswith(id_prefix, autoescape=True))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return np.array(
            [(_utc(s) - _utc(k)).total_seconds() * 1000.0 for k, s in rows], dtype=np.float64
        )

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
            last = conn.execute(sa.select(sa.func.max(items.c.stored_at))).scalar_one()
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
            "last_stored_at": _utc(last).isoformat() if last else None,
            "labels": label_stats,
            "drift_events": {
                "total": int(sum(drift_by_detector.values())),
                "by_detector": {k: int(v) for k, v in sorted(drift_by_detector.items())},
                "last_at": _utc(last_drift).isoformat() if last_drift else None,
            },
            "alerts": {
                "total": int(sum(alert_kinds.values())),
                "unacknowledged": int(unacked),
                "by_kind": {k: int(v) for k, v in sorted(alert_kinds.items())},
                "by_severity": {k: int(v) for k, v in sorted(alert_severity.items())},
                "last_window_end": _utc(last_alert).isoformat() if last_alert else None,
            },
            "promotions": {
                "promoted": int(actions.get("promote", 0)),
                "rolled_back": int(actions.get("rollback", 0)),
                "candidates_rejected": int(actions.get("candidate_rejected", 0)),
                "awaiting_approval": int(actions.get("candidate_awaiting_approval", 0)),
            },
        }

    def recent_accuracy(self, n: int = 200) -> dict[str, tuple[int, float]]:
        """Each model version's accuracy on the latest ``n`` labels of items it scored.

        ``{version: (labels, accuracy)}``: how the serving model does on what
        the stream brings now (the whole-history figure of :meth:`stats` moves
        slowly after a drift).
        """
        latest = (
            sa.select(labels.c.item_id, labels.c.label)
            .where(labels.c.label.is_not(None), labels.c.item_id.is_not(None))
            .order_by(labels.c.seq.desc())
            .limit(n)
            .subquery()
        )
        correct = sa.case((latest.c.label == items.c.label, 1), else_=0)
        q = (
            sa.select(items.c.model_version, sa.func.count(), sa.func.sum(correct))
            .select_from(latest.join(items, latest.c.item_id == items.c.id))
            .group_by(items.c.model_version)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return {v: (int(k), round(int(c or 0) / k, 4)) for v, k, c in rows if k}

    @staticmethod
    def _label_stats(conn: Any) -> dict[str, Any]:
        """Labels in all, by source, and joined to the scored items: accuracy per version."""
        sentiment = labels.c.label.is_not(None)
        total = conn.execute(
            sa.select(sa.func.count()).select_from(labels).where(sentiment)
        ).scalar_one()
        topics = conn.execute(
            sa.select(sa.func.count()).select_from(labels).where(labels.c.topic.is_not(None))
        ).scalar_one()
        by_source = dict(
            conn.execute(
                sa.select(labels.c.source, sa.func.count())
                .where(sentiment)
                .group_by(labels.c.source)
            ).all()
        )
        correct = sa.case((labels.c.label == items.c.label, 1), else_=0)
        per_version = conn.execute(
            sa.select(items.c.model_version, sa.func.count(), sa.func.sum(correct))
            .select_from(labels.join(items, labels.c.item_id == items.c.id))
            .where(sentiment)
            .group_by(items.c.model_version)
        ).all()
        return {
            "total": int(total),
            "topic_corrections": int(topics),
            "by_source": {k: int(v) for k, v in sorted(by_source.items())},
            "by_model_version": {
                v: {"labelled": int(n), "correct": int(c or 0), "accuracy": round((c or 0) / n, 4)}
                for v, n, c in sorted(per_version)
            },
        }


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _make_engine(url: str) -> Engine:
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
