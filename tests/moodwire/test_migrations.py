"""The store's migrations: a new store goes to the newest revision, a store the release
before migrations wrote is adopted in place with every row kept, and two processes
opening one new store migrate it once. On SQLite and on PostgreSQL."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from state import migrations
from state.store import Store, metadata
from state.store.schema import make_engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("pg_fresh")


# -- the release before migrations: its tables, frozen here (a copy of state/store/schema.py
# as it was then), and a row or more in each ---------------------------------------------

legacy = sa.MetaData()


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
    legacy,
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
    legacy,
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
    legacy,
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
    legacy,
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
    legacy,
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
    legacy,
    sa.Column("topic", sa.String(256), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("max_ts", sa.DateTime(timezone=True)),
    sa.Column("caught_up", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

alerts = sa.Table(
    "alerts",
    legacy,
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
    legacy,
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


T0 = datetime(2026, 1, 5, 9, 0, 0, 123456, tzinfo=UTC)


def _legacy_rows() -> dict[str, list[dict]]:
    """Rows for every table of the old schema, with every column set (None where nullable)."""
    items_rows = [
        {
            "seq": i + 1,
            "id": f"item-{i}",
            "text": f"ACME beats estimates, take {i} — ünïcode",
            "ts": T0 + timedelta(seconds=i),
            "source": "wire" if i % 2 else None,
            "entities": ["ACME", "INIT"][: 1 + i % 2],
            "meta": {"k": i, "nested": {"x": [1, 2]}},
            "label": ["negative", "neutral", "positive"][i % 3],
            "topic": "earnings" if i % 2 else None,
            "p_negative": 0.1 + i / 100,
            "p_neutral": 0.2,
            "p_positive": 0.7 - i / 100,
            "confidence": 0.7,
            "model_version": "v1",
            "neighbors": [{"id": "item-0", "score": 0.5}] if i else [],
            "embedding": bytes(range(i, i + 8)),
            "src_partition": i % 4,
            "src_offset": 1000 + i,
            "kafka_ts": T0 if i % 2 else None,
            "scored_at": T0 + timedelta(seconds=i, milliseconds=5),
            "stored_at": T0 + timedelta(seconds=i, milliseconds=9),
            "published": bool(i % 2),
        }
        for i in range(5)
    ]
    return {
        "items": items_rows,
        "item_entities": [
            {"item_id": r["id"], "entity": e, "ts": r["ts"], "label": r["label"], "score": 0.3}
            for r in items_rows
            for e in r["entities"]
        ],
        "rejected": [
            {"seq": 1, "topic": "news", "partition": 0, "offset": 7, "reason": "malformed_json",
             "detail": "x", "raw": "{", "raw_base64": "ew==", "raw_bytes": 1, "rejected_at": T0,
             "published": False},
            {"seq": 2, "topic": "news", "partition": 1, "offset": 8, "reason": "oversized",
             "detail": "y", "raw": "…", "raw_base64": None, "raw_bytes": None,
             "rejected_at": T0, "published": True},
        ],
        # seq with gaps, as a PostgreSQL sequence leaves them (rolled-back probes).
        "audit_log": [
            {"seq": 1, "ts": T0, "actor": "ann", "action": "promote", "target": "v1",
             "reason": "bootstrap", "details": {"previous": None}},
            {"seq": 4, "ts": T0 + timedelta(hours=1), "actor": "bob", "action": "acknowledge",
             "target": "al-1", "reason": None, "details": {}},
            {"seq": 9, "ts": T0 + timedelta(hours=2), "actor": "learner", "action": "promote",
             "target": "v2", "reason": "beat v1 on new labels",
             "details": {"switch": "tok", "acc": [0.91, 0.88], "ünï": "cödé"}},
        ],
        "labels": [
            {"seq": 1, "id": "l" * 64, "item_id": "item-1", "text": "t", "label": "negative",
             "topic": None, "source": "analyst", "annotator": "ann", "ts": T0,
             "received_at": T0},
            {"seq": 2, "id": "m" * 64, "item_id": None, "text": None, "label": None,
             "topic": "legal_regulatory", "source": "feed", "annotator": None, "ts": T0,
             "received_at": T0},
        ],
        "partition_marks": [
            {"topic": "news", "partition": 0, "max_ts": T0, "caught_up": True, "updated_at": T0},
            {"topic": "news", "partition": 1, "max_ts": None, "caught_up": False,
             "updated_at": T0},
        ],
        "alerts": [
            {"seq": 1, "id": "a" * 64, "kind": "negative_surge", "scope": "entity",
             "entity": "ACME", "topic": None, "severity": "warning", "window_start": T0,
             "window_end": T0, "first_window_start": T0, "statistic": 5.0, "baseline": 0.2,
             "revision": 2, "payload": {"id": "a" * 64, "evidence": {"top": []}},
             "created_at": T0, "updated_at": T0, "acknowledged_by": "ann",
             "acknowledged_at": T0, "muted_until": T0 + timedelta(hours=1)},
        ],
        "drift_events": [
            {"seq": 1, "ts": T0, "detector": "adwin", "signal": "confidence", "statistic": 0.4,
             "window": 200, "position": 1234, "origin": "worker:1", "model_version": "v1",
             "details": {"mean": 0.5}},
        ],
    }  # fmt: skip


def _make_legacy_store(url: str) -> dict[str, list[dict]]:
    engine = make_engine(url)
    legacy.create_all(engine)
    rows = _legacy_rows()
    with engine.begin() as conn:
        for name, table_rows in rows.items():
            conn.execute(legacy.tables[name].insert(), table_rows)
            if engine.dialect.name == "postgresql" and "seq" in table_rows[0]:
                # As the release wrote them: through the sequence, which is now past them.
                conn.execute(
                    sa.text(f"SELECT setval(pg_get_serial_sequence('{name}', 'seq'), :n)"),
                    {"n": max(r["seq"] for r in table_rows)},
                )
    engine.dispose()
    return rows


def _normal(value: object) -> object:
    if isinstance(value, datetime):  # SQLite gives naive UTC, PostgreSQL the session's zone
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def _table_rows(engine: sa.Engine, name: str, columns: list[str]) -> list[dict]:
    table = legacy.tables[name]
    order = [table.c[c.name] for c in table.primary_key.columns]
    with engine.connect() as conn:
        result = conn.execute(sa.select(*(table.c[c] for c in columns)).order_by(*order))
        return [{k: _normal(v) for k, v in r.items()} for r in result.mappings()]


# -- tests ------------------------------------------------------------------------------


def test_revisions_form_one_line_named_after_their_files() -> None:
    """head() reads the newest file name: every file must hold the revision it is named
    after, revising the one before it (a second head would be a fork)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    files = sorted(migrations.VERSIONS.glob("[0-9]*.py"))
    assert [f.stem for f in files][:2] == ["0001_baseline", "0002_audit_chain"]
    previous = None
    for f in files:
        assigned = {
            node.targets[0].id: ast.literal_eval(node.value)
            for node in ast.parse(f.read_text()).body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("revision", "down_revision")
        }  # fmt: skip
        assert assigned == {"revision": f.stem, "down_revision": previous}, f.name
        previous = f.stem
    config = Config()
    config.set_main_option("script_location", str(migrations.VERSIONS.parent))
    assert ScriptDirectory.from_config(config).get_heads() == [migrations.head()]


def test_a_new_store_is_built_at_the_newest_revision_and_matches_the_schema(url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = Store(url)
    assert migrations.current(store.engine) == migrations.head()
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    # Alembic's own table is declared in the metadata only so drop_all clears it.
    diff = [d for d in diff if "alembic_version" not in repr(d)]
    assert diff == []
    # A second open finds it done: one query, no change.
    assert migrations.upgrade(store.engine).changed is False


def test_a_store_from_before_migrations_is_adopted_and_keeps_every_row(url: str) -> None:
    rows = _make_legacy_store(url)
    assert migrations.current(make_engine(url)) is None

    done = migrations.upgrade(make_engine(url))
    assert (done.before, done.after, done.adopted) == (None, migrations.head(), True)

    store = Store(url)
    for name, expected in rows.items():
        columns = list(expected[0])
        got = _table_rows(store.engine, name, columns)
        want = [{k: _normal(v) for k, v in r.items()} for r in expected]
        assert len(got) == len(want), name
        assert got == want, name
    # The rows already there were chained, in seq order, and the chain goes on from them.
    check = store.verify_audit()
    assert check.intact and check.count == 3 and check.head_seq == 9
    store.audit("carol", "rollback", "v1", "regressed", {})
    rows_after = store.audit_rows()
    assert [r["seq"] for r in rows_after][:3] == [1, 4, 9]
    assert rows_after[-1]["prev_hash"] == check.head_hash
    assert store.verify_audit().intact and store.verify_audit().count == 4
    # The other stores' writes work on the adopted tables.
    assert store.count_items() == 5 and store.stats()["alerts"]["total"] == 1


def test_an_older_store_missing_later_indexes_and_columns_gains_them(url: str) -> None:
    """What the in-place upgrade of the releases before migrations did, 0001 still does:
    a store older still (no ix_items_ts_scores, no rejected.raw_base64) gets them."""
    engine = make_engine(url)
    legacy.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_items_ts_scores"))
        conn.execute(sa.text("DROP INDEX ix_item_entities_ts_scores"))
        conn.execute(sa.text("ALTER TABLE rejected DROP COLUMN raw_base64"))
        conn.execute(legacy.tables["rejected"].insert(), [
            {k: v for k, v in r.items() if k != "raw_base64"}
            for r in _legacy_rows()["rejected"]
        ])  # fmt: skip
    inspector = sa.inspect(engine)
    assert "raw_base64" not in {c["name"] for c in inspector.get_columns("rejected")}

    store = Store(url)
    inspector = sa.inspect(store.engine)
    indexes = {ix["name"] for t in ("items", "item_entities") for ix in inspector.get_indexes(t)}
    assert {"ix_items_ts_scores", "ix_item_entities_ts_scores"} <= indexes
    assert "raw_base64" in {c["name"] for c in inspector.get_columns("rejected")}
    assert len(store.rejections()) == 2
    assert migrations.current(store.engine) == migrations.head()


def test_a_failed_step_leaves_the_store_as_it_was(url: str, monkeypatch) -> None:
    """Every step runs in the one transaction: 0002 failing half-way keeps the old store."""
    rows = _make_legacy_store(url)
    import state.audit_chain

    def boom(_row: object) -> str:
        raise RuntimeError("disk on fire")

    # 0002 imports row_hash when alembic loads it: fail it there.
    monkeypatch.setattr(state.audit_chain, "row_hash", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrations.upgrade(make_engine(url))
    engine = make_engine(url)
    assert migrations.current(engine) is None  # not even 0001 was recorded
    columns = {c["name"] for c in sa.inspect(engine).get_columns("audit_log")}
    assert "hash" not in columns
    assert len(_table_rows(engine, "audit_log", ["seq"])) == len(rows["audit_log"])
    monkeypatch.undo()
    assert migrations.upgrade(engine).after == migrations.head()


OPENER = textwrap.dedent(
    """
    import json, sys
    from state import migrations
    from state.store.schema import make_engine
    print("waiting", flush=True)
    done = migrations.upgrade(make_engine(sys.argv[1]))
    print(json.dumps({"before": done.before, "after": done.after, "changed": done.changed}))
    """
)


def test_two_processes_opening_one_new_store_migrate_it_once(url: str, tmp_path: Path) -> None:
    """Both openers reach the migration while a third holds its lock; released, one
    migrates and the other finds the work done (no error, nothing run twice)."""
    engine = make_engine(url)
    holder = engine.connect()
    if engine.dialect.name == "postgresql":
        tx = holder.begin()
        holder.execute(sa.select(sa.func.pg_advisory_xact_lock(migrations.MIGRATION_LOCK)))
    else:
        tx = holder.begin()
        holder.exec_driver_sql("BEGIN IMMEDIATE")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:  # both started and past their imports, now blocked on the lock
            assert p.stdout is not None and p.stdout.readline().strip() == "waiting"
        time.sleep(1.0)
        assert all(p.poll() is None for p in procs), "an opener did not wait for the lock"
    finally:
        tx.rollback()
        holder.close()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["changed"] for r in results) == [False, True]
    assert all(r["after"] == migrations.head() for r in results)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert Store(url).verify_audit().intact


def test_drop_all_clears_a_store_whole_and_the_next_open_rebuilds_it(url: str) -> None:
    store = Store(url)
    store.audit("ann", "promote", "v1", None, {})
    metadata.drop_all(store.engine)
    again = Store(url)
    assert migrations.current(again.engine) == migrations.head()
    assert again.verify_audit().count == 0


def test_store_commands_report_and_upgrade_a_pre_migration_store(tmp_path: Path) -> None:
    from helpers import clean_env, last_json, moodwire_cli

    url = f"sqlite:///{tmp_path / 'old.db'}"
    rows = _make_legacy_store(url)
    env = clean_env(tmp_path, store_url=url)
    res = moodwire_cli(["store", "current"], env)
    assert res.returncode == 1  # behind
    assert last_json(res.stdout) == {
        "current": None,
        "head": migrations.head(),
        "up_to_date": False,
    }
    res = moodwire_cli(["store", "upgrade"], env)
    assert res.returncode == 0, res.stderr
    assert last_json(res.stdout) == {"before": None, "after": migrations.head(), "adopted": True}
    res = moodwire_cli(["store", "current"], env)
    assert res.returncode == 0 and last_json(res.stdout)["up_to_date"] is True
    res = moodwire_cli(["audit", "list"], env)
    assert res.returncode == 0
    assert [line.split()[0] for line in res.stdout.splitlines()] == [
        str(r["seq"]) for r in rows["audit_log"]
    ]
    listed = json.loads(moodwire_cli(["audit", "list", "--json"], env).stdout)
    assert [r["actor"] for r in listed] == ["ann", "bob", "learner"]
    assert moodwire_cli(["audit", "verify"], env).stdout.startswith("audit log intact: 3 entries")
