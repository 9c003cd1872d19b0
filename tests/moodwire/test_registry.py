from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from learner.registry import Registry, RegistryError


def _save(payload: str):
    def save(d: Path) -> None:
        (d / "model.safetensors").write_text(payload)

    return save


def test_versions_are_numbered_immutable_and_carry_their_card(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.write_version(_save("a"), {"kind": "bootstrap"}) == "v1"
    assert reg.write_version(_save("b"), {"kind": "retrain"}) == "v2"
    assert [v.name for v in reg.versions()] == ["v1", "v2"]
    assert reg.card("v2") == {"kind": "retrain", "version": "v2"}
    # Read-only on disk (root can still override modes; nothing in Moodwire writes there).
    assert stat.S_IMODE((reg.path("v1") / "model.safetensors").stat().st_mode) == 0o444
    assert not list((tmp_path / "versions").glob(".incoming-*"))


def test_promote_and_rollback(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for p in "abc":
        reg.write_version(_save(p), {})
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    assert reg.promote("v1") is None
    assert reg.promote("v3") == "v1"
    assert reg.rollback() == ("v3", "v1")
    assert reg.serving() == "v1"
    with pytest.raises(RegistryError, match="unknown model version 'v9'"):
        reg.promote("v9")


def test_a_failed_write_leaves_no_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)

    def broken(d: Path) -> None:
        (d / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        reg.write_version(broken, {})
    assert reg.versions() == [] and list((tmp_path / "versions").iterdir()) == []


def test_concurrent_writers_never_share_a_name(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    names: list[str] = []
    threads = [
        threading.Thread(target=lambda: names.append(reg.write_version(_save("x"), {})))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(names, key=lambda n: int(n[1:])) == [f"v{i}" for i in range(1, 9)]
