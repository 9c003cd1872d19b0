"""Audit first: an operator action that happened is audited; a failed audit write changes nothing.

Real registries, real SQLite and PostgreSQL stores, the real broker. The
failures are real too: a PostgreSQL role that may not insert audit rows, a
store on a closed port, and a deferred constraint trigger that fails the
commit after the serving pointer was switched.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import TEST_ORIGINS, populate_dashboard_store, read_all
from structlog.testing import capture_logs

from moodwire.settings import Settings, Topics
from state.registry import Registry
from state.store import Store, alerts
from stream import operations
from stream.access import Principal
from stream.broker import free_port

pytestmark = pytest.mark.integration


def _save(payload: str):  # noqa: ANN202
    def save(d: Path) -> None:
        (d / "weights.txt").write_text(payload)

    return save


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """v1 then v2 served (so there is something to roll back to), v3 written."""
    reg = Registry(tmp_path / "registry")
    for payload in "abc":
        reg.write_version(_save(payload), {"kind": "test"})
    reg.promote("v1")
    reg.promote("v2")
    return reg


def _settings(broker: str, registry: Registry, store_url: str) -> Settings:
    """The actions' settings, with the operators the tests act as in the store (no password:
    these tests are about the audit, sign-in is tests/stream/test_access.py's)."""
    try:
        store = Store(store_url)
        with store.engine.begin() as conn:
            for name in ("ann", "bob", "doomed"):
                if store.user(name) is None:
                    store.add_user_in(conn, name, "operator", None, None)
    except (sa.exc.OperationalError, OSError):
        pass  # the tests of an unreachable store
    unique = uuid.uuid4().hex[:8]
    topics = Topics(**{k: f"{v}-{unique}" for k, v in Topics().model_dump().items()})
    return Settings(
        bootstrap_servers=broker,
        registry=registry.root,
        data_dir=registry.root.parent,
        store_url=store_url,
        topics=topics,
        origins=TEST_ORIGINS,  # retrain commands and corrections are signed
    )


def _control(settings: Settings) -> list[dict]:
    return [
        json.loads(r.value) for r in read_all(settings.bootstrap_servers, settings.topics.control)
    ]


def _alert(store: Store, alert_id: str) -> dict:
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(alerts).where(alerts.c.id == alert_id)).mappings().one()
    return {k: row[k] for k in ("acknowledged_by", "acknowledged_at", "muted_until")}


# -- Store.audited -----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return request.getfixturevalue("pg_fresh")


def test_audited_commits_the_row_with_the_effect_or_neither(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    populate_dashboard_store(store, tmp_path / "dash-registry")
    before = len(store.audit_rows())
    with store.audited("ann", "acknowledge", "al-init", "seen", {}) as conn:
        assert store.acknowledge_alert_in(conn, "al-init", "ann")
    with pytest.raises(RuntimeError), store.audited("bob", "mute", "al-drift", None, {}) as conn:
        assert store.mute_alert_in(conn, "al-drift", None)
        raise RuntimeError("the effect failed")
    rows = store.audit_rows()[before:]
    assert [(r["actor"], r["action"], r["target"]) for r in rows] == [
        ("ann", "acknowledge", "al-init")
    ]
    by_id = {a["id"]: a for a in store.alert_rows()}
    assert by_id["al-init"]["acknowledged_by"] == "ann"


# -- promote / rollback -----------------------------------------------------------------


def test_promote_and_rollback_are_audited_and_announced(
    broker: str, registry: Registry, tmp_path: Path
) -> None:
    settings = _settings(broker, registry, f"sqlite:///{tmp_path / 'm.db'}")
    assert operations.promote(
        settings.operations(), "v3", by=Principal("ann", "operator"), reason="better"
    ) == {
        "serving": "v3",
        "previous": "v2",
    }
    assert operations.rollback(
        settings.operations(), by=Principal("bob", "operator"), reason="worse"
    ) == {
        "serving": "v2",
        "previous": "v3",
    }
    store = Store(settings.resolved_store_url())
    rows = store.audit_rows()
    # Each row also carries its switch's token (the pointer records it: see reconcile_serving).
    assert all(len(r["details"].pop("switch")) == 32 for r in rows)
    assert [(r["actor"], r["action"], r["target"], r["details"]) for r in rows] == [
        ("ann", "promote", "v3", {"previous": "v2"}),
        ("bob", "rollback", "v2", {"from": "v3"}),
    ]
    # Unkeyed control messages spread over the topic's partitions: no order across them.
    assert sorted((m["action"], m["version"]) for m in _control(settings)) == [
        ("promote", "v3"),
        ("rollback", "v2"),
    ]


@pytest.mark.parametrize("where", ["closed port", "under a file"])
def test_promote_with_an_unreachable_store_changes_nothing(
    broker: str, registry: Registry, tmp_path: Path, where: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    url = {
        "closed port": f"postgresql://postgres@127.0.0.1:{free_port()}/test",
        "under a file": f"sqlite:///{tmp_path / 'a-file' / 'x.db'}",
    }[where]
    settings = _settings(broker, registry, url)
    before = registry.pointer_state()
    with pytest.raises((sa.exc.OperationalError, OSError)):
        operations.promote(
            settings.operations(), "v3", by=Principal("ann", "operator"), reason="better"
        )
    with pytest.raises((sa.exc.OperationalError, OSError)):
        operations.rollback(settings.operations(), by=Principal("ann", "operator"), reason="worse")
    assert registry.pointer_state() == before and registry.serving() == "v2"
    assert _control(settings) == []


@pytest.fixture
def no_audit_url(pg_url: str) -> Iterator[str]:
    """The test database as a role that may do everything but insert audit rows."""
    Store(pg_url)  # the tables exist
    role = f"noaudit_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        conn.execute(
            sa.text(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}")
        )
        conn.execute(sa.text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"))
        conn.execute(sa.text(f"REVOKE INSERT ON audit_log FROM {role}"))
    try:
        yield pg_url.replace("://postgres@", f"://{role}@", 1)
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"
                ),
                {"r": role},
            )
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def test_no_effect_without_its_audit_row(
    broker: str, registry: Registry, pg_url: str, no_audit_url: str, tmp_path: Path
) -> None:
    admin_store = Store(pg_url)
    populate_dashboard_store(admin_store, tmp_path / "dash-registry")
    audited_before = admin_store.audit_rows()
    labels_before = admin_store.stats()["labels"]["total"]
    # The database is the session's: other tests may have acted on this alert already.
    alert_before = _alert(admin_store, "al-drift")
    settings = _settings(broker, registry, no_audit_url)
    before = registry.pointer_state()

    for action in (
        lambda: operations.promote(
            settings.operations(), "v3", by=Principal("ann", "operator"), reason="better"
        ),
        lambda: operations.rollback(
            settings.operations(), by=Principal("ann", "operator"), reason="worse"
        ),
        lambda: operations.request_retrain(
            settings.operations(), by=Principal("ann", "operator"), reason="drift"
        ),
        lambda: operations.acknowledge(
            settings.operations(), "al-drift", by=Principal("ann", "operator"), reason="seen"
        ),
        lambda: operations.mute(
            settings.operations(),
            "al-drift",
            hours=2,
            by=Principal("ann", "operator"),
            reason="noise",
        ),
        lambda: operations.correct(
            settings.operations(),
            "it-1",
            by=Principal("ann", "operator"),
            label="negative",
            reason="x",
        ),
    ):
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            action()

    assert registry.pointer_state() == before and registry.serving() == "v2"
    assert admin_store.audit_rows() == audited_before
    assert _alert(admin_store, "al-drift") == alert_before  # neither acknowledged nor muted
    assert admin_store.stats()["labels"]["total"] == labels_before
    assert _control(settings) == []  # neither the promotion nor the retrain was sent
    assert read_all(broker, settings.topics.labels) == []  # nor the correction


# -- a commit that fails after the switch -----------------------------------------------


@pytest.fixture
def doomed_commits(pg_url: str) -> Iterator[str]:
    """A deferred constraint trigger: a commit holding an audit row by ``doomed`` fails."""
    Store(pg_url)
    name = f"doom_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.actor = 'doomed' THEN RAISE EXCEPTION 'injected commit failure'; END IF; "
                "RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                f"CREATE CONSTRAINT TRIGGER {name} AFTER INSERT ON audit_log "
                f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}()"
            )
        )
    try:
        yield pg_url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP TRIGGER {name} ON audit_log"))
            conn.execute(sa.text(f"DROP FUNCTION {name}()"))
        admin.dispose()


def test_a_commit_failure_after_the_switch_puts_the_pointer_back(
    broker: str, registry: Registry, doomed_commits: str
) -> None:
    settings = _settings(broker, registry, doomed_commits)
    store = Store(doomed_commits)
    audited_before = store.audit_rows()
    before = registry.pointer_state()
    with capture_logs() as logs:
        with pytest.raises(sa.exc.DatabaseError, match="injected commit failure"):
            operations.promote(
                settings.operations(), "v3", by=Principal("doomed", "operator"), reason="better"
            )
        assert registry.pointer_state() == before
        with pytest.raises(sa.exc.DatabaseError, match="injected commit failure"):
            operations.rollback(
                settings.operations(), by=Principal("doomed", "operator"), reason="worse"
            )
    assert registry.pointer_state() == before and registry.serving() == "v2"
    assert registry.history() == ["v1", "v2"]
    assert store.audit_rows() == audited_before
    undone = [e for e in logs if e["event"] == "serving_switch_undone"]
    assert [(e["action"], e["target"]) for e in undone] == [("promote", "v3"), ("rollback", "v1")]
    assert _control(settings) == []
    # The same store commits anyone else's actions.
    operations.promote(
        settings.operations(), "v3", by=Principal("ann", "operator"), reason="better"
    )
    assert registry.serving() == "v3" and store.audit_rows()[-1]["actor"] == "ann"


def test_a_sqlite_commit_failure_after_the_switch_puts_the_pointer_back(
    broker: str, registry: Registry, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    settings = _settings(broker, registry, url)
    store = Store(url)
    before = registry.pointer_state()
    holding: set[int] = set()  # connections with an uncommitted audit row
    seen: list[str | None] = []

    def note_audit_rows(conn, cursor, statement, *_args) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_LOG"):
            holding.add(id(conn))

    def fail_commit(conn: sa.engine.Connection) -> None:
        if id(conn) in holding:
            holding.discard(id(conn))
            seen.append(Registry(registry.root).serving())  # switched before the commit
            raise sa.exc.OperationalError("COMMIT", {}, RuntimeError("disk I/O error"))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", note_audit_rows)
    sa.event.listen(sa.engine.Engine, "commit", fail_commit)
    try:
        with pytest.raises(sa.exc.OperationalError, match="disk I/O error"):
            operations.promote(
                settings.operations(), "v3", by=Principal("ann", "operator"), reason="better"
            )
    finally:
        sa.event.remove(sa.engine.Engine, "commit", fail_commit)
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", note_audit_rows)
    assert seen == ["v3"]
    assert registry.pointer_state() == before and store.audit_rows() == []
    assert _control(settings) == []


def test_a_switch_that_fails_leaves_no_audit_row(registry: Registry, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    before = registry.pointer_state()
    with (
        pytest.raises(RuntimeError, match="after the switch"),
        operations.audited_switch(
            store,
            registry,
            actor="ann",
            action="promote",
            target="v3",
            reason=None,
            details={},
        ),
    ):
        registry.promote("v3")
        raise RuntimeError("something after the switch failed")
    assert registry.pointer_state() == before and store.audit_rows() == []


# -- database effects -------------------------------------------------------------------


def test_acknowledge_mute_and_correct_write_effect_and_row_together(
    broker: str, registry: Registry, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    store = Store(url)
    populate_dashboard_store(store, tmp_path / "dash-registry")
    settings = _settings(broker, registry, url)
    before = len(store.audit_rows())
    operations.acknowledge(
        settings.operations(), "al-init", by=Principal("ann", "operator"), reason="seen"
    )
    operations.mute(
        settings.operations(), "al-drift", hours=1, by=Principal("ann", "operator"), reason="noise"
    )
    out = operations.correct(
        settings.operations(),
        "it-1",
        by=Principal("ann", "operator"),
        label="negative",
        reason="sarcasm",
    )
    with pytest.raises(ValueError, match="no alert"):
        operations.acknowledge(
            settings.operations(), "al-none", by=Principal("ann", "operator"), reason="seen"
        )
    rows = store.audit_rows()[before:]
    assert [(r["action"], r["target"]) for r in rows] == [
        ("acknowledge", "al-init"),
        ("mute", "al-drift"),
        ("correct", "it-1"),
    ]
    by_id = {a["id"]: a for a in store.alert_rows()}
    assert by_id["al-init"]["acknowledged_by"] == "ann" and by_id["al-drift"]["muted_until"]
    assert out["label_id"] in {r["id"] for r in store.labels_after(0)}
    (sent,) = read_all(broker, settings.topics.labels)
    assert json.loads(sent.value)["label"] == "negative"
