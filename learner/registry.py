"""The model registry: immutable versions on disk and an atomically switched serving pointer.

Layout::

    REGISTRY/
      versions/v1/            model.safetensors, config.json, tokenizer files, card.json
      versions/v2/ ...
      serving.json            {"version": "v2", "history": ["v1", "v2"], "updated_at": ...}

A version directory is written under a temporary name and renamed into place,
so a crash mid-write never leaves a half version; files are then made
read-only. ``serving.json`` is replaced with ``os.replace`` (atomic on POSIX).

>>> import tempfile
>>> reg = Registry(tempfile.mkdtemp())
>>> reg.serving() is None, reg.versions()
(True, [])
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_VERSION_RE = re.compile(r"^v(\d+)$")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to…)."""


@dataclass(frozen=True)
class VersionInfo:
    name: str
    path: Path
    card: dict[str, Any]


class Registry:
    """Versions of the sentiment classifier and which one serves."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

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
        return [
            VersionInfo(d.name, d, json.loads((d / "card.json").read_text()))
            for _, d in sorted(found)
        ]

    def path(self, version: str) -> Path:
        p = self._versions_dir / version
        if not _VERSION_RE.match(version) or not (p / "card.json").is_file():
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise RegistryError(f"unknown model version {version!r} (known: {known})")
        return p

    def card(self, version: str) -> dict[str, Any]:
        return json.loads((self.path(version) / "card.json").read_text())

    def write_version(self, save: Callable[[Path], None], card: dict[str, Any]) -> str:
        """Write a new immutable version; ``save(dir)`` writes the model files into ``dir``."""
        self._versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self._versions_dir))
        try:
            save(tmp)
            for _ in range(100):
                name = f"v{self._next_number()}"
                full_card = {**card, "version": name}
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

    def _next_number(self) -> int:
        numbers = [
            int(m.group(1))
            for d in (self._versions_dir.iterdir() if self._versions_dir.is_dir() else [])
            if (m := _VERSION_RE.match(d.name))
        ]
        return max(numbers, default=0) + 1

    # -- serving pointer ------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        if not self.serving_file.is_file():
            return {"version": None, "history": []}
        return json.loads(self.serving_file.read_text())

    def serving(self) -> str | None:
        return self._state().get("version")

    def history(self) -> list[str]:
        return list(self._state().get("history", []))

    def promote(self, version: str) -> str | None:
        """Make ``version`` the serving one; returns the previously serving version."""
        self.path(version)  # must exist
        state = self._state()
        previous = state.get("version")
        history = [v for v in state.get("history", [])]
        history.append(version)
        self._write_state({"version": version, "history": history[-100:]})
        return previous

    def rollback(self) -> tuple[str, str]:
        """Serve the version that served before the current one; returns ``(from, to)``."""
        state = self._state()
        history = list(state.get("history", []))
        current = state.get("version")
        if current is None or len(history) < 2:
            raise RegistryError("nothing to roll back to: fewer than two versions have served")
        history.pop()  # the current one
        target = history[-1]
        self._write_state({"version": target, "history": history})
        return current, target

    def _write_state(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state = {**state, "updated_at": datetime.now(UTC).isoformat()}
        fd, tmp = tempfile.mkstemp(prefix=".serving-", dir=self.root)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.serving_file)


def _make_read_only(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
