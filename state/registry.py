"""The model registry: immutable versions on disk and an atomically switched serving pointer.

Layout::

    REGISTRY/
      versions/v1/            model.safetensors, config.json, tokenizer files, card.json
      versions/v2/ ...
      serving.json            {"version": "v2", "history": ["v1", "v2"], "updated_at": ...}

A version directory is written under a temporary name and renamed into place,
so a crash mid-write never leaves a half version; files are then made
read-only. The card records the sha256 and size of every other file of the
version (``"files"``), and :meth:`Registry.verify` checks them: a flipped
byte, a missing, changed or extra file is refused before the version serves.
``serving.json`` is replaced with ``os.replace`` (atomic on POSIX).

>>> import tempfile
>>> reg = Registry(tempfile.mkdtemp())
>>> reg.serving() is None, reg.versions()
(True, [])
>>> v1 = reg.write_version(lambda d: (d / "weights.txt").write_text("w"), {"kind": "example"})
>>> reg.card(v1)["files"]["weights.txt"]["size"]
1
>>> reg.verify(v1).name
'v1'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)
_VERSION_RE = re.compile(r"^v(\d+)$")
_CARD = "card.json"


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to…)."""


class VersionIntegrityError(RegistryError):
    """A version's files are not those its card recorded: it must not serve or be trained from."""

    def __init__(self, version: str, file: str | None, problem: str) -> None:
        self.version = version
        self.file = file
        super().__init__(f"version {version} refused: {problem}")


@dataclass(frozen=True)
class VersionInfo:
    name: str
    path: Path
    card: dict[str, Any]
    # Why the card could not be read (the card is then empty); None when it was.
    problem: str | None = None


class SwitchTokens:
    """The audited switch of a serving pointer, shared by the local and the shared registry.

    Pointer writes inside :meth:`switch_token` record the token (the audit row's) and what
    they replaced, so a switch whose audit row never committed can be found
    (:meth:`pending_switch`) and undone (:meth:`revert_switch`). A registry provides
    ``serving()``, ``_state()`` (the pointer as a dict) and ``_put_state(state)``.
    """

    _token: str | None = None

    def serving(self) -> str | None:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _put_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    @contextmanager
    def switch_token(self, token: str) -> Iterator[None]:
        """Pointer writes inside the block record ``token`` and what they replaced."""
        self._token = token
        try:
            yield
        finally:
            self._token = None

    def pending_switch(self) -> dict[str, Any] | None:
        """The last switch's ``{"token", "at", "before"}``, when it was made under a token."""
        switch = self._state().get("switch")
        return switch if isinstance(switch, dict) and isinstance(switch.get("token"), str) else None

    def revert_switch(self) -> str | None:
        """Serve what served before the last (tokened) switch; returns that version."""
        switch = self.pending_switch()
        if switch is None:
            return self.serving()
        before = switch.get("before") or {}
        state = {"version": before.get("version"), "history": list(before.get("history") or [])}
        self._put_state(state)
        return state["version"]


class Registry(SwitchTokens):
    """Versions of the sentiment classifier and which one serves."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        """Where the registry is, for messages."""
        return str(self.root)

    @property
    def _versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def serving_file(self) -> Path:
        """The serving pointer (replaced atomically on every change; cheap to ``stat``)."""
        return self.root / "serving.json"

    # -- versions -------------------------------------------------------------------------

    def versions(self) -> list[VersionInfo]:
        if not self._versions_dir.is_dir():
            return []
        found = []
        for d in self._versions_dir.iterdir():
            m = _VERSION_RE.match(d.name)
            if m and d.is_dir() and (d / "card.json").is_file():
                found.append((int(m.group(1)), d))
        out = []
        for _, d in sorted(found):
            try:
                card, problem = _read_card(d.name, d), None
            except VersionIntegrityError as exc:
                card, problem = {}, str(exc)
            out.append(VersionInfo(d.name, d, card, problem))
        return out

    def path(self, version: str) -> Path:
        p = self._versions_dir / version
        if not _VERSION_RE.match(version) or not (p / "card.json").is_file():
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise RegistryError(f"unknown model version {version!r} (known: {known})")
        return p

    def card(self, version: str) -> dict[str, Any]:
        return _read_card(version, self.path(version))

    def write_version(self, save: Callable[[Path], None], card: dict[str, Any]) -> str:
        """Write a new immutable version; ``save(dir)`` writes the model files into ``dir``.

        The card gets ``"files"``: the sha256 and size of every file ``save``
        wrote (relative POSIX paths), taken before the version is renamed into place.
        """
        self._versions_dir.mkdir(parents=True, exist_ok=True)
        self.reap_incoming()
        # The writer's host and pid in the name: a writer killed mid-write is recognised.
        prefix = f"{_INCOMING}{socket.gethostname()}-{os.getpid()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=self._versions_dir))
        try:
            save(tmp)
            (tmp / _CARD).unlink(missing_ok=True)  # the registry writes the card
            files = {name: _digest(tmp / name) for name in _files_of(tmp)}
            for _ in range(100):
                name = f"v{self._next_number()}"
                full_card = {**card, "version": name, "files": files}
                (tmp / "card.json").write_text(json.dumps(full_card, indent=2, default=str))
                try:
                    # rename onto a missing path is atomic; onto an existing one it fails,
                    # so two writers can never take the same name.
                    os.rename(tmp, self._versions_dir / name)
                except OSError:
                    continue
                _make_read_only(self._versions_dir / name)
                return name
            raise RegistryError("could not allocate a version name")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def reap_incoming(self, *, max_age_s: float = 86_400.0) -> list[str]:
        """Remove half-written versions whose writer is dead; returns their names.

        A writer SIGKILLed mid-write leaves its temporary directory (a full
        model's size) behind. One of this host whose process is gone, or any
        older than ``max_age_s``, is removed; a live writer's is left alone.
        """
        if not self._versions_dir.is_dir():
            return []
        host, removed = socket.gethostname(), []
        for d in self._versions_dir.glob(f"{_INCOMING}*"):
            if not d.is_dir():
                continue
            owner_host, pid = _writer_of(d.name)
            try:
                age = time.time() - d.stat().st_mtime
            except FileNotFoundError:
                continue
            dead = owner_host == host and pid is not None and not _alive(pid)
            if dead or age > max_age_s or (pid is None and age > 3600):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        if removed:
            log.warning("half_written_versions_removed", names=removed)
        return removed

    def verify(self, version: str) -> Path:
        """Check every file of ``version`` against its card; returns the version's directory.

        Raises :class:`VersionIntegrityError` naming the version and the first
        file that is missing, changed (sha256 or size) or not in the card, or
        a card that cannot be read or records no checksums.
        """
        path = self.path(version)
        verify_files(version, path, _read_card(version, path))
        return path

    def verify_stored(self, version: str) -> None:
        """:meth:`verify`, for callers that only need to know (the shared registry checks its
        database's copy without fetching one)."""
        self.verify(version)

    def _next_number(self) -> int:
        numbers = [
            int(m.group(1))
            for d in (self._versions_dir.iterdir() if self._versions_dir.is_dir() else [])
            if (m := _VERSION_RE.match(d.name))
        ]
        return max(numbers, default=0) + 1

    # -- serving pointer ------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        """The serving pointer, checked: a malformed one is a :class:`RegistryError`."""
        if not self.serving_file.is_file():
            return {"version": None, "history": []}
        where = str(self.serving_file)
        fix = "move it aside and promote a version (`moodwire promote VERSION`)"
        try:
            state = json.loads(self.serving_file.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise RegistryError(f"{where} is not valid JSON ({exc}): {fix}") from None
        if not isinstance(state, dict):
            raise RegistryError(
                f"{where} must hold a JSON object, not {type(state).__name__}: {fix}"
            )
        version = state.get("version")
        if version is not None and not isinstance(version, str):
            raise RegistryError(f"{where}: 'version' must be a string, not {version!r}: {fix}")
        history = state.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
            raise RegistryError(f"{where}: 'history' must be a list of version names: {fix}")
        if version is not None:
            try:
                self.path(version)
            except RegistryError as exc:
                raise RegistryError(f"{where} names {exc}: {fix}") from None
        out: dict[str, Any] = {"version": version, "history": history}
        if isinstance(state.get("switch"), dict):
            out["switch"] = state["switch"]
        return out

    def pointer_token(self) -> tuple[int, int, int] | None:
        """What identifies the pointer's last write, cheaply (one ``stat``): it changes on every
        write (``os.replace`` gives each a new inode; with mtime and size, two writes within one
        mtime tick differ too). None when there is no pointer."""
        try:
            st = os.stat(self.serving_file)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def serving(self) -> str | None:
        """The serving version (None when none serves); a malformed pointer raises."""
        return self._state()["version"]

    def history(self) -> list[str]:
        return list(self._state()["history"])

    def pointer_state(self) -> bytes | None:
        """``serving.json`` exactly as it is now (None when there is none), for :meth:`restore`."""
        try:
            return self.serving_file.read_bytes()
        except FileNotFoundError:
            return None

    def restore(self, saved: bytes | None) -> None:
        """Put the serving pointer back exactly as :meth:`pointer_state` saw it (atomically)."""
        if saved is None:
            self.serving_file.unlink(missing_ok=True)
            return
        self._replace_pointer(saved)

    def promote(self, version: str) -> str | None:
        """Make ``version`` the serving one; returns the previously serving version.

        The version's files are verified first: a tampered version is never promoted.
        """
        self.verify(version)
        state = self._state()
        previous = state["version"]
        history = list(state["history"])
        history.append(version)
        self._write_state({"version": version, "history": history[-100:]})
        return previous

    def rollback_target(self) -> tuple[str, str]:
        """What :meth:`rollback` would do now, ``(from, to)``, without doing it."""
        return _rollback_of(self._state())

    def rollback(self) -> tuple[str, str]:
        """Serve the version that served before the current one; returns ``(from, to)``.

        The target's files are verified first: a tampered version is never served.
        """
        state = self._state()
        current, target = _rollback_of(state)
        self.verify(target)
        self._write_state({"version": target, "history": state["history"][:-1]})
        return current, target

    def _put_state(self, state: dict[str, Any]) -> None:
        self._write_state(state)

    def _write_state(self, state: dict[str, Any]) -> None:
        now = datetime.now(UTC).isoformat()
        token = getattr(self, "_token", None)
        if token is not None:
            old = self._state() if self.serving_file.is_file() else {"version": None}
            before = {"version": old.get("version"), "history": old.get("history", [])}
            state = {**state, "switch": {"token": token, "at": now, "before": before}}
        state = {**state, "updated_at": now}
        self._replace_pointer(json.dumps(state, indent=2).encode())

    def _replace_pointer(self, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".serving-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.serving_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _rollback_of(state: dict[str, Any]) -> tuple[str, str]:
    history, current = state["history"], state["version"]
    if current is None or len(history) < 2:
        raise RegistryError("nothing to roll back to: fewer than two versions have served")
    return current, history[-2]


def checked_files(version: str, card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The card's ``"files"`` (sha256 and size of each), or why it cannot be trusted."""
    files = card.get("files")
    if files is None:
        raise VersionIntegrityError(
            version,
            _CARD,
            "its card records no checksums (written before Moodwire recorded them): "
            "retrain it, or train a new version with `moodwire bootstrap --train FILE`",
        )
    if not isinstance(files, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("size"), int)
        for e in files.values()
    ):
        raise VersionIntegrityError(
            version, _CARD, 'card.json: "files" must map each file to its sha256 and size'
        )
    return files


def verify_files(version: str, path: Path, card: dict[str, Any]) -> None:
    """Check the files under ``path`` against ``card``: the first problem is raised."""
    files = checked_files(version, card)
    present = set(_files_of(path))
    problems: list[tuple[str, str]] = []
    for name in sorted(set(files) - present):
        problems.append((name, f"{name} is missing"))
    for name in sorted(present - set(files)):
        problems.append((name, f"{name} is not one of its files (added after it was written)"))
    for name in sorted(present & set(files)):
        expected = files[name]
        if (path / name).stat().st_size != expected["size"]:
            problems.append((name, f"{name} has changed (size differs from its card)"))
        elif _digest(path / name)["sha256"] != expected["sha256"]:
            problems.append((name, f"{name} has changed (sha256 differs from its card)"))
    if problems:
        file, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VersionIntegrityError(version, file, problem + more)


def _read_card(version: str, path: Path) -> dict[str, Any]:
    try:
        card = json.loads((path / _CARD).read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise VersionIntegrityError(
            version, _CARD, f"card.json is not valid JSON ({exc})"
        ) from None
    if not isinstance(card, dict):
        raise VersionIntegrityError(version, _CARD, "card.json does not hold a JSON object")
    return card


def _files_of(root: Path) -> list[str]:
    """Every file under ``root`` but its card, as sorted relative POSIX paths."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() != _CARD
    )


def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return {"sha256": h.hexdigest(), "size": size}


def _make_read_only(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


_INCOMING = ".incoming-"


def _writer_of(name: str) -> tuple[str | None, int | None]:
    """``(host, pid)`` from ``.incoming-HOST-PID-RANDOM`` (``(None, None)`` for older names)."""
    rest = name[len(_INCOMING) :]
    host, _, tail = rest.rpartition("-")  # tail: mkdtemp's random part
    host, _, pid = host.rpartition("-")
    return (host or None, int(pid)) if pid.isdigit() else (None, None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
