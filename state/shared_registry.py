"""The model registry in the database: one registry for workers and learners on many hosts.

:class:`~state.registry.Registry` keeps versions in a local directory, which
only processes of one host (or of one shared filesystem) can see.
:class:`SharedRegistry` keeps the same things in the SQL database every host
already shares (PostgreSQL in production; SQLite works the same, for one host):

* a version is a ``registry_versions`` row (its card, with the sha256 and size
  of every file) and its files' chunks in ``registry_files``, all written in
  **one transaction**: a writer killed mid-write leaves nothing, never half a
  version; two writers never take the same name (the primary key refuses the
  second, which takes the next);
* the serving pointer is the one ``registry_pointer`` row, changed under a row
  lock (``SELECT … FOR UPDATE``): promotions from several hosts are serialised,
  and each write bumps ``generation``, the cheap thing workers watch between
  batches (:meth:`pointer_token`, one indexed read);
* each host keeps **verified copies** of the versions it serves under its own
  ``cache`` directory (``cache/versions/vN``): a copy is streamed from the
  database into a temporary directory, checked file by file against the card,
  and renamed into place; every :meth:`verify` checks it again, and a damaged
  copy is replaced by a fresh one (what is in the database is the truth; a
  version whose stored files do not match its card is refused).

The public interface is :class:`~state.registry.Registry`'s, so the learner,
the operator actions, the workers and the dashboard use either unchanged;
:func:`open_registry` picks one from the settings.

>>> import tempfile
>>> reg = SharedRegistry("sqlite://", tempfile.mkdtemp())
>>> reg.serving() is None, reg.versions()
(True, [])
>>> v1 = reg.write_version(lambda d: (d / "weights.txt").write_text("w"), {"kind": "example"})
>>> reg.promote(v1) is None, reg.serving(), reg.card(v1)["files"]["weights.txt"]["size"]
(True, 'v1', 1)
>>> (reg.verify(v1) / "weights.txt").read_text()
'w'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog

from state.registry import (
    _CARD,
    _INCOMING,
    _VERSION_RE,
    Registry,
    RegistryError,
    SwitchTokens,
    VersionInfo,
    VersionIntegrityError,
    _files_of,
    _make_read_only,
    _rollback_of,
    checked_files,
    verify_files,
)
from state.store.schema import make_engine, registry_files, registry_pointer, registry_versions

log = structlog.get_logger(__name__)

_CHUNK = 4 << 20  # bytes per stored chunk: a row stays small, a model file streams
_POINTER_ID = 1


class SharedRegistry(SwitchTokens):
    """Versions and the serving pointer in a SQL database; verified copies in ``cache``."""

    def __init__(self, url: str, cache: str | os.PathLike[str], *, create: bool = True) -> None:
        self.url = url
        self.root = Path(cache)  # this host's copies (the name Registry's users know)
        self.engine = make_engine(url)
        if create:
            # The registry's tables are the store schema's (migration 0004): migrated under
            # the migration lock like the store's, never raced by a second create_all.
            from state.migrations import upgrade

            upgrade(self.engine)
        self._token: str | None = None

    def __repr__(self) -> str:  # never the URL's password
        return f"SharedRegistry({self.engine.url.render_as_string(hide_password=True)!r})"

    @property
    def location(self) -> str:
        """Where the registry is, for messages (no password)."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def _versions_dir(self) -> Path:
        return self.root / "versions"

    # -- versions -------------------------------------------------------------------------

    def versions(self) -> list[VersionInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(registry_versions.c.name, registry_versions.c.card).order_by(
                    registry_versions.c.number
                )
            ).all()
        out = []
        for name, card in rows:
            ok = isinstance(card, dict)
            problem = None if ok else f"version {name} refused: its card is not a JSON object"
            out.append(VersionInfo(name, self._versions_dir / name, card if ok else {}, problem))
        return out

    def _known(self) -> str:
        return ", ".join(v.name for v in self.versions()) or "none"

    def card(self, version: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return self._card(conn, version)

    def _card(self, conn: sa.Connection, version: str) -> dict[str, Any]:
        card = conn.execute(
            sa.select(registry_versions.c.card).where(registry_versions.c.name == version)
        ).scalar_one_or_none()
        if card is None or not _VERSION_RE.match(version):
            raise RegistryError(f"unknown model version {version!r} (known: {self._known()})")
        if not isinstance(card, dict):
            raise VersionIntegrityError(version, _CARD, "its card is not a JSON object")
        return card

    def path(self, version: str) -> Path:
        """This host's verified copy of ``version`` (fetched from the database if missing)."""
        return self.verify(version)

    def write_version(self, save: Callable[[Path], None], card: dict[str, Any]) -> str:
        """Write a new immutable version; ``save(dir)`` writes the model files into ``dir``.

        The files and the card (with every file's sha256 and size) go to the
        database in one transaction; the directory becomes this host's copy.
        """
        self._versions_dir.mkdir(parents=True, exist_ok=True)
        self.reap_incoming()
        prefix = f"{_INCOMING}{socket.gethostname()}-{os.getpid()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=self._versions_dir))
        try:
            save(tmp)
            (tmp / _CARD).unlink(missing_ok=True)  # the registry writes the card
            names = _files_of(tmp)
            for _ in range(100):
                try:
                    name, full_card = self._insert_version(tmp, names, card)
                except sa.exc.IntegrityError:
                    continue  # another writer took that name meanwhile: take the next
                (tmp / _CARD).write_text(json.dumps(full_card, indent=2))
                self._place(tmp, name)
                return name
            raise RegistryError("could not allocate a version name")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _insert_version(
        self, tmp: Path, names: list[str], card: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        with self.engine.begin() as conn:
            number = (
                conn.execute(sa.select(sa.func.max(registry_versions.c.number))).scalar() or 0
            ) + 1
            name = f"v{number}"
            files: dict[str, dict[str, Any]] = {}
            # The row first: a second writer of the same name fails here, before any upload.
            conn.execute(
                registry_versions.insert().values(
                    name=name, number=number, card={}, created_at=datetime.now(UTC)
                )
            )
            for rel in names:
                h, size = hashlib.sha256(), 0
                with open(tmp / rel, "rb") as f:
                    for chunk, block in enumerate(iter(lambda f=f: f.read(_CHUNK), b"")):
                        h.update(block)
                        size += len(block)
                        conn.execute(
                            registry_files.insert().values(
                                version=name, path=rel, chunk=chunk, data=block
                            )
                        )
                    if size == 0:
                        conn.execute(
                            registry_files.insert().values(
                                version=name, path=rel, chunk=0, data=b""
                            )
                        )
                files[rel] = {"sha256": h.hexdigest(), "size": size}
            full_card = json.loads(
                json.dumps({**card, "version": name, "files": files}, default=str)
            )
            conn.execute(
                registry_versions.update()
                .where(registry_versions.c.name == name)
                .values(card=full_card)
            )
        return name, full_card

    def _place(self, tmp: Path, name: str) -> Path:
        """Rename a checked copy into this host's cache (replacing a stale one)."""
        dest = self._versions_dir / name
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not a concurrent fetch of the same version on this host
                raise
        _make_read_only(dest)
        return dest

    def reap_incoming(self, *, max_age_s: float = 86_400.0) -> list[str]:
        """Remove half-fetched or half-written copies of dead processes from the cache.

        (The database never holds half a version: a version is one transaction.)
        """
        return Registry(self.root).reap_incoming(max_age_s=max_age_s)

    def verify(self, version: str) -> Path:
        """This host's copy of ``version``, checked file by file against the card.

        A copy that is missing is fetched; one that fails the check is logged
        (``cached_version_damaged``) and fetched again. A version whose files in
        the database do not match its card raises :class:`VersionIntegrityError`.
        """
        card = self.card(version)
        checked_files(version, card)
        path = self._versions_dir / version
        if path.is_dir():
            try:
                verify_files(version, path, card)
                return path
            except VersionIntegrityError as exc:
                log.warning("cached_version_damaged", version=version, reason=str(exc))
                shutil.rmtree(path, ignore_errors=True)
        return self._fetch(version, card)

    def verify_stored(self, version: str) -> None:
        """Check the database's copy of ``version`` against its card, writing nothing to disk
        (an operator promoting from a laptop downloads nothing)."""
        card = self.card(version)
        files = checked_files(version, card)
        seen: dict[str, dict[str, Any]] = {}
        for rel, h, size in self._stream(version, None):
            seen[rel] = {"sha256": h, "size": size}
        _compare(version, files, seen)

    def _stream(self, version: str, into: Path | None) -> Iterator[tuple[str, str, int]]:
        """``(path, sha256, size)`` per stored file, each written under ``into`` if given."""
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=4).execute(
                sa.select(registry_files.c.path, registry_files.c.chunk, registry_files.c.data)
                .where(registry_files.c.version == version)
                .order_by(registry_files.c.path, registry_files.c.chunk)
            )
            current: str | None = None
            h, size, expect, out = hashlib.sha256(), 0, 0, None
            for rel, chunk, data in result:
                if rel != current:
                    if current is not None:
                        if out is not None:
                            out.close()
                        yield current, h.hexdigest(), size
                    if ".." in Path(rel).parts or Path(rel).is_absolute():
                        raise VersionIntegrityError(version, rel, f"{rel} is not a relative path")
                    current, h, size, expect = rel, hashlib.sha256(), 0, 0
                    if into is not None:
                        (into / rel).parent.mkdir(parents=True, exist_ok=True)
                        out = open(into / rel, "wb")  # noqa: SIM115 - closed per file
                if chunk != expect:
                    raise VersionIntegrityError(version, rel, f"{rel} is missing chunk {expect}")
                expect += 1
                h.update(data)
                size += len(data)
                if out is not None:
                    out.write(data)
            if current is not None:
                if out is not None:
                    out.close()
                yield current, h.hexdigest(), size

    def _fetch(self, version: str, card: dict[str, Any]) -> Path:
        """Stream ``version`` from the database into this host's cache, checked before use."""
        self._versions_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{_INCOMING}{socket.gethostname()}-{os.getpid()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=self._versions_dir))
        try:
            seen = {rel: {"sha256": h, "size": n} for rel, h, n in self._stream(version, tmp)}
            _compare(version, checked_files(version, card), seen)
            (tmp / _CARD).write_text(json.dumps(card, indent=2))
            path = self._place(tmp, version)
            log.info("registry_version_fetched", version=version, files=len(seen))
            return path
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # -- serving pointer ------------------------------------------------------------------

    def _read(self, conn: sa.Connection, *, lock: bool = False) -> Any:
        query = sa.select(registry_pointer).where(registry_pointer.c.id == _POINTER_ID)
        if lock:
            query = query.with_for_update()
        return conn.execute(query).mappings().one_or_none()

    def _state(self, row: Any = None) -> dict[str, Any]:
        if row is None:
            with self.engine.connect() as conn:
                row = self._read(conn)
        if row is None:
            return {"version": None, "history": []}
        fix = "promote a version (`moodwire promote VERSION`)"
        history = row["history"]
        if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
            raise RegistryError(f"registry_pointer: 'history' must be a list of names: {fix}")
        out: dict[str, Any] = {"version": row["version"], "history": list(history)}
        if isinstance(row["switch"], dict):
            out["switch"] = row["switch"]
        return out

    def pointer_token(self) -> int | None:
        """The pointer's generation: bumped by every write (None when none was written)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(registry_pointer.c.generation).where(registry_pointer.c.id == _POINTER_ID)
            ).scalar_one_or_none()

    def serving(self) -> str | None:
        return self._state()["version"]

    def history(self) -> list[str]:
        return list(self._state()["history"])

    def pointer_state(self) -> bytes | None:
        """The pointer exactly as it is now (None when there is none), for :meth:`restore`."""
        with self.engine.connect() as conn:
            row = self._read(conn)
        if row is None:
            return None
        saved = {
            "version": row["version"],
            "history": row["history"],
            "switch": row["switch"],
            "updated_at": as_text(row["updated_at"]),
        }
        return json.dumps(saved, sort_keys=True).encode()

    def restore(self, saved: bytes | None) -> None:
        """Put the pointer back as :meth:`pointer_state` saw it (a new generation)."""
        state = json.loads(saved) if saved is not None else None
        with self.engine.begin() as conn:
            row = self._read(conn, lock=True)
            values = {
                "version": state["version"] if state else None,
                "history": state["history"] if state else [],
                "switch": state.get("switch") if state else None,
                "updated_at": _when(state["updated_at"]) if state else datetime.now(UTC),
            }
            self._put(conn, row, values)

    def _put(self, conn: sa.Connection, row: Any, values: dict[str, Any]) -> None:
        if row is None:
            conn.execute(registry_pointer.insert().values(id=_POINTER_ID, generation=1, **values))
        else:
            conn.execute(
                registry_pointer.update()
                .where(registry_pointer.c.id == _POINTER_ID)
                .values(generation=row["generation"] + 1, **values)
            )

    def _switch(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Apply ``change(state) -> new state`` under the pointer's row lock; the old state."""
        with self.engine.begin() as conn:
            row = self._read(conn, lock=True)
            old = self._state(row) if row is not None else {"version": None, "history": []}
            new = change(old)
            if new["version"] is not None:
                self._card(conn, new["version"])  # names a version the database holds
            now = datetime.now(UTC)
            switch = None
            if self._token is not None:
                before = {"version": old["version"], "history": old["history"]}
                switch = {"token": self._token, "at": now.isoformat(), "before": before}
            values = {
                "version": new["version"],
                "history": new["history"],
                "switch": switch,
                "updated_at": now,
            }
            self._put(conn, row, values)
        return old

    def promote(self, version: str) -> str | None:
        """Make ``version`` the serving one; returns the previously serving version.

        The database's copy is verified first: a tampered version is never promoted.
        """
        self.verify_stored(version)
        old = self._switch(
            lambda s: {"version": version, "history": (s["history"] + [version])[-100:]}
        )
        return old["version"]

    def rollback_target(self) -> tuple[str, str]:
        return _rollback_of(self._state())

    def rollback(self) -> tuple[str, str]:
        current, target = _rollback_of(self._state())
        self.verify_stored(target)

        def back(state: dict[str, Any]) -> dict[str, Any]:
            if _rollback_of(state) != (current, target):
                raise RegistryError("the serving version changed meanwhile: roll back again")
            return {"version": target, "history": state["history"][:-1]}

        self._switch(back)
        return current, target

    def _put_state(self, state: dict[str, Any]) -> None:
        self._switch(lambda _old: state)


def _compare(version: str, files: dict[str, Any], seen: dict[str, dict[str, Any]]) -> None:
    for name in sorted(set(files) - set(seen)):
        raise VersionIntegrityError(version, name, f"{name} is missing from the shared registry")
    for name in sorted(set(seen) - set(files)):
        raise VersionIntegrityError(version, name, f"{name} is not one of its files")
    for name in sorted(files):
        if seen[name]["size"] != files[name]["size"]:
            raise VersionIntegrityError(version, name, f"{name} has changed (size differs)")
        if seen[name]["sha256"] != files[name]["sha256"]:
            raise VersionIntegrityError(version, name, f"{name} has changed (sha256 differs)")


def as_text(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


def _when(text: str | None) -> datetime:
    return datetime.fromisoformat(text) if text else datetime.now(UTC)


AnyRegistry = Registry | SharedRegistry


def open_registry(root: str | os.PathLike[str], url: str | None = None) -> AnyRegistry:
    """The registry the settings name: shared in the database at ``url`` (a SQL URL), with
    this host's copies under ``root``; else the local directory ``root`` (``url`` unset or
    ``file://DIR``, which names the directory).

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> type(open_registry(d)).__name__, type(open_registry(d, "sqlite://")).__name__
    ('Registry', 'SharedRegistry')
    >>> open_registry(d, "file:///srv/registry").root
    PosixPath('/srv/registry')
    """
    if url is None or not url.strip():
        return Registry(root)
    url = url.strip()
    if url.startswith("file://"):
        return Registry(url[len("file://") :])
    if url.startswith(("postgresql", "postgres", "sqlite")):
        return SharedRegistry(url, root)
    raise RegistryError(
        f"unsupported registry URL {url.split('://')[0]}://…: use postgresql://… or "
        "sqlite:///PATH (a registry in that database), or file:///DIR (a local directory)"
    )
