"""The registry in the database: two "hosts" (separate cache directories) share one registry.

Run on SQLite and on a real PostgreSQL database of the test's own.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from state.registry import RegistryError, VersionIntegrityError
from state.shared_registry import SharedRegistry, open_registry
from state.store import Store
from state.store.schema import registry_files
from stream.operations import audited_switch, reconcile_serving
from stream.scorer import ServingWatcher


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return request.getfixturevalue("pg_fresh")


def _save(payload: bytes, extra: dict[str, bytes] | None = None):
    def save(d: Path) -> None:
        (d / "model.safetensors").write_bytes(payload)
        for name, data in (extra or {}).items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)

    return save


def test_a_version_written_on_one_host_is_served_verified_on_another(
    db_url: str, tmp_path: Path
) -> None:
    a = SharedRegistry(db_url, tmp_path / "host-a")
    b = SharedRegistry(db_url, tmp_path / "host-b")
    big = bytes(range(256)) * (5 << 12)  # 5 MiB: more than one stored chunk
    v1 = a.write_version(_save(big, {"tok/vocab.txt": b"x", "empty": b""}), {"kind": "test"})
    assert v1 == "v1" and [v.name for v in b.versions()] == ["v1"]
    assert b.card(v1)["files"]["model.safetensors"] == {
        "sha256": hashlib.sha256(big).hexdigest(),
        "size": len(big),
    }
    assert not (tmp_path / "host-b" / "versions" / "v1").exists()  # nothing fetched yet
    path = b.verify(v1)
    assert path == tmp_path / "host-b" / "versions" / "v1"
    assert (path / "model.safetensors").read_bytes() == big
    assert (path / "tok" / "vocab.txt").read_bytes() == b"x" and (
        path / "empty"
    ).read_bytes() == b""
    assert not list((tmp_path / "host-b" / "versions").glob(".incoming-*"))

    watcher = ServingWatcher(b)
    assert b.serving() is None and not watcher.moved()
    assert a.promote(v1) is None
    assert watcher.moved() and b.serving() == "v1"
    v2 = a.write_version(_save(b"two"), {"kind": "test"})
    assert b.promote(v2) == "v1" and a.serving() == v2 and a.history() == ["v1", v2]
    assert a.rollback() == (v2, "v1") and b.serving() == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        b.rollback()
    with pytest.raises(RegistryError, match="unknown model version 'v9'"):
        a.promote("v9")


def test_a_damaged_copy_is_fetched_again_and_a_tampered_stored_file_is_refused(
    db_url: str, tmp_path: Path
) -> None:
    a = SharedRegistry(db_url, tmp_path / "host-a")
    v1 = a.write_version(_save(b"weights"), {})
    copy = a.verify(v1) / "model.safetensors"
    copy.chmod(0o644)
    copy.write_bytes(b"WEIGHTS")  # this host's copy damaged: the database still has it right
    assert (a.verify(v1) / "model.safetensors").read_bytes() == b"weights"

    with a.engine.begin() as conn:  # the stored file itself changed behind the card's back
        conn.execute(registry_files.update().values(data=b"evil!!!"))
    fresh = SharedRegistry(db_url, tmp_path / "host-c")
    with pytest.raises(VersionIntegrityError, match="sha256 differs"):
        fresh.verify(v1)
    assert not (tmp_path / "host-c" / "versions" / v1).exists()  # nothing half-trusted left
    with pytest.raises(VersionIntegrityError):
        fresh.promote(v1)
    assert fresh.serving() is None


def test_a_failed_write_leaves_nothing_and_concurrent_writers_take_distinct_names(
    db_url: str, tmp_path: Path
) -> None:
    reg = SharedRegistry(db_url, tmp_path / "host-a")

    def broken(d: Path) -> None:
        (d / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        reg.write_version(broken, {})
    assert reg.versions() == []
    hosts = [SharedRegistry(db_url, tmp_path / f"host-{i}") for i in range(4)]
    names: list[str] = []
    errors: list[BaseException] = []

    def write(h: SharedRegistry, i: int) -> None:
        try:
            names.append(h.write_version(_save(f"w{i}".encode()), {"i": i}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(h, i)) for i, h in enumerate(hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(names) == ["v1", "v2", "v3", "v4"]
    for v in reg.versions():  # each name holds the files of the writer that took it
        i = v.card["i"]
        assert (reg.verify(v.name) / "model.safetensors").read_bytes() == f"w{i}".encode()


def test_an_unaudited_switch_is_undone_and_a_failed_audit_puts_the_pointer_back(
    db_url: str, tmp_path: Path
) -> None:
    # On SQLite (one writer at a time) the store and the registry need files of their own:
    # a promotion's audit row and pointer write overlap. PostgreSQL takes both in one.
    store = Store(db_url if db_url.startswith("postgresql") else f"sqlite:///{tmp_path}/s.db")
    reg = SharedRegistry(db_url, tmp_path / "host-a")
    v1 = reg.write_version(_save(b"1"), {})
    v2 = reg.write_version(_save(b"2"), {})
    with audited_switch(
        store, reg, actor="t", action="promote", target=v1, reason=None, details={}
    ):
        reg.promote(v1)
    assert reg.serving() == v1 and reconcile_serving(store, reg, grace_s=0) is None

    before = reg.pointer_state()
    with (
        pytest.raises(RuntimeError),
        audited_switch(store, reg, actor="t", action="promote", target=v2, reason=None, details={}),
    ):
        reg.promote(v2)
        raise RuntimeError("the audit commit fails")
    assert reg.serving() == v1 and reg.pointer_state() == before

    with reg.switch_token("never-audited"):  # a writer killed before its audit row committed
        reg.promote(v2)
    assert reg.serving() == v2
    assert reconcile_serving(store, reg, grace_s=0) == v1
    assert reg.serving() == v1


def test_open_registry_keeps_the_directory_unless_a_database_is_named(tmp_path: Path) -> None:
    assert type(open_registry(tmp_path)).__name__ == "Registry"
    assert type(open_registry(tmp_path, f"sqlite:///{tmp_path}/r.db")).__name__ == "SharedRegistry"
    with pytest.raises(RegistryError, match="unsupported registry URL s3://"):
        open_registry(tmp_path, "s3://bucket/registry")
    shared = SharedRegistry(
        "postgresql://moodwire:hunter2@db.example/moodwire", tmp_path, create=False
    )
    assert "hunter2" not in repr(shared) and "hunter2" not in shared.location


def test_the_migration_creates_the_tables_the_schema_declares(tmp_path: Path) -> None:
    """Alembic's 0004 upgrade on an empty database gives create_all's columns; a shared
    registry works on it; downgrade removes them."""
    import importlib.util

    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    from state.store import metadata

    path = Path(__file__).resolve().parents[2] / "state/migrations/versions/0004_shared_registry.py"
    spec = importlib.util.spec_from_file_location("m0004", path)
    migration = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(migration)
    assert (migration.revision, migration.down_revision) == ("0004_shared_registry", "0003_users")
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    engine = sa.create_engine(url)
    tables = ("registry_versions", "registry_files", "registry_pointer")
    with engine.begin() as conn:
        with Operations.context(MigrationContext.configure(conn)):
            migration.upgrade()
        inspector = sa.inspect(conn)
        for table in tables:
            got = {c["name"]: c["nullable"] for c in inspector.get_columns(table)}
            want = {c.name: c.nullable for c in metadata.tables[table].columns}
            assert got == want, table
            assert inspector.get_pk_constraint(table)["constrained_columns"] == [
                c.name for c in metadata.tables[table].primary_key
            ]
    reg = SharedRegistry(url, tmp_path / "cache", create=False)
    reg.promote(reg.write_version(_save(b"w"), {}))
    assert reg.serving() == "v1"
    with engine.begin() as conn:
        with Operations.context(MigrationContext.configure(conn)):
            migration.downgrade()
        assert not set(tables) & set(sa.inspect(conn).get_table_names())
