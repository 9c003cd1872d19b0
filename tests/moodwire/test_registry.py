from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from state.registry import Registry, RegistryError, VersionIntegrityError


def _save(payload: str):
    def save(d: Path) -> None:
        (d / "model.safetensors").write_text(payload)

    return save


def test_versions_are_numbered_immutable_and_carry_their_card(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.write_version(_save("a"), {"kind": "bootstrap"}) == "v1"
    assert reg.write_version(_save("b"), {"kind": "retrain"}) == "v2"
    assert [v.name for v in reg.versions()] == ["v1", "v2"]
    sha = hashlib.sha256(b"b").hexdigest()
    assert reg.card("v2") == {
        "kind": "retrain",
        "version": "v2",
        "files": {"model.safetensors": {"sha256": sha, "size": 1}},
    }
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


# -- checksums --------------------------------------------------------------------------


def test_the_card_records_every_file_recursively_but_itself(tmp_path: Path) -> None:
    def save(d: Path) -> None:
        (d / "model.safetensors").write_bytes(b"\x00\x01weights")
        (d / "tokenizer").mkdir()
        (d / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
        (d / "card.json").write_text("{}")  # the registry writes the card itself

    reg = Registry(tmp_path)
    files = reg.card(reg.write_version(save, {}))["files"]
    assert files == {
        "model.safetensors": {
            "sha256": hashlib.sha256(b"\x00\x01weights").hexdigest(),
            "size": 9,
        },
        "tokenizer/vocab.txt": {
            "sha256": hashlib.sha256(b"[PAD]\n[UNK]\n").hexdigest(),
            "size": 12,
        },
    }
    assert reg.verify("v1") == tmp_path / "versions" / "v1"


def _writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def test_verify_names_the_version_and_the_file(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for _ in range(5):
        reg.write_version(_save("weights"), {})
    d = tmp_path / "versions"
    _writable(d / "v1" / "model.safetensors").write_text("weightz")  # same size, other bytes
    (d / "v2" / "model.safetensors").unlink()
    (d / "v3" / "extra.bin").write_bytes(b"x")
    card = json.loads((d / "v4" / "card.json").read_text())
    del card["files"]
    _writable(d / "v4" / "card.json").write_text(json.dumps(card))
    _writable(d / "v5" / "card.json").write_text("{not json")

    expected = {
        "v1": ("model.safetensors", "model.safetensors has changed (sha256"),
        "v2": ("model.safetensors", "model.safetensors is missing"),
        "v3": ("extra.bin", "extra.bin is not one of its files"),
        "v4": ("card.json", "records no checksums"),
        "v5": ("card.json", "card.json is not valid JSON"),
    }
    for version, (file, words) in expected.items():
        with pytest.raises(VersionIntegrityError) as caught:
            reg.verify(version)
        assert caught.value.version == version and caught.value.file == file
        assert str(caught.value).startswith(f"version {version} refused: ")
        assert words in str(caught.value)
    with pytest.raises(VersionIntegrityError, match="retrain it, or train a new version"):
        reg.verify("v4")
    # The listing survives an unreadable card and says what is wrong with it.
    listed = {v.name: v for v in reg.versions()}
    assert listed["v5"].card == {} and "not valid JSON" in (listed["v5"].problem or "")
    assert listed["v1"].problem is None


def test_a_tampered_version_is_never_promoted_or_rolled_back_to(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for p in "ab":
        reg.write_version(_save(p), {})
    reg.promote("v1")
    reg.promote("v2")
    _writable(tmp_path / "versions" / "v1" / "model.safetensors").write_text("z")
    before = reg.pointer_state()
    with pytest.raises(VersionIntegrityError, match="v1"):
        reg.rollback()
    with pytest.raises(VersionIntegrityError, match="v1"):
        reg.promote("v1")
    assert reg.pointer_state() == before


# -- the serving pointer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b'["v1"]', "must hold a JSON object, not list"),
        (b'{"version": 1, "history": []}', "'version' must be a string"),
        (b'{"version": "v9", "history": ["v9"]}', "unknown model version 'v9'"),
        (b'{"version": "v1", "history": "v1"}', "'history' must be a list"),
        (b'{"version": "v1", "history": ["v1", 2]}', "'history' must be a list"),
    ],
)
def test_a_malformed_pointer_is_a_registry_error_naming_the_file(
    tmp_path: Path, content: bytes, words: str
) -> None:
    reg = Registry(tmp_path)
    reg.write_version(_save("a"), {})
    reg.serving_file.write_bytes(content)
    for read in (reg.serving, reg.history, reg.rollback, lambda: reg.promote("v1")):
        with pytest.raises(RegistryError) as caught:
            read()
        message = str(caught.value)
        assert str(reg.serving_file) in message and words in message
        assert "\n" not in message
    assert reg.serving_file.read_bytes() == content  # nothing overwrote it


def test_restore_puts_the_pointer_back_byte_for_byte(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for p in "ab":
        reg.write_version(_save(p), {})
    assert reg.pointer_state() is None
    reg.promote("v1")
    reg.restore(None)  # there was none
    assert not reg.serving_file.exists() and reg.serving() is None
    reg.promote("v1")
    saved = reg.pointer_state()
    reg.promote("v2")
    inode = os.stat(reg.serving_file).st_ino
    reg.restore(saved)
    assert reg.pointer_state() == saved and reg.serving() == "v1"
    assert os.stat(reg.serving_file).st_ino != inode  # replaced, not edited in place
    assert not list(tmp_path.glob(".serving-*"))


def test_a_writer_killed_mid_write_leaves_nothing_the_next_one_keeps(tmp_path: Path) -> None:
    import os
    import signal
    import time

    root = tmp_path / "reg"
    pid = os.fork()
    if pid == 0:  # a writer that is SIGKILLed halfway through its model files
        Registry(root).write_version(
            lambda d: ((d / "model.safetensors").write_bytes(b"x" * 10**6), time.sleep(60)),
            {"kind": "killed"},
        )
        os._exit(0)
    deadline = time.monotonic() + 20
    while not list((root / "versions").glob(".incoming-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((root / "versions").glob(".incoming-*")), "the writer never started"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    live = root / "versions" / f".incoming-{__import__('socket').gethostname()}-{os.getpid()}-x"
    live.mkdir()  # a writer that is alive (this process): left alone
    Registry(root).write_version(lambda d: (d / "w.txt").write_text("w"), {"kind": "next"})
    assert sorted(p.name for p in (root / "versions").iterdir()) == [live.name, "v1"]


def test_a_switch_whose_audit_row_never_committed_is_undone(tmp_path: Path) -> None:
    import json
    from datetime import UTC, datetime, timedelta

    from state.store import Store
    from stream.operations import audited_switch, reconcile_serving

    reg = Registry(tmp_path / "reg")
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    save = lambda d: (d / "w.txt").write_text("w")  # noqa: E731
    v1, v2, v3 = (reg.write_version(save, {"kind": "x"}) for _ in range(3))
    with audited_switch(store, reg, actor="a", action="promote", target=v1, reason="r", details={}):
        reg.promote(v1)
    with audited_switch(store, reg, actor="a", action="promote", target=v2, reason="r", details={}):
        reg.promote(v2)
    assert reconcile_serving(store, reg) is None and reg.serving() == v2  # audited: stands

    # A process killed after the switch, before its audit transaction committed.
    with reg.switch_token("never-committed"):
        reg.promote(v3)
    assert reconcile_serving(store, reg) is None  # its transaction may still be open
    state = json.loads(reg.serving_file.read_text())
    state["switch"]["at"] = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    reg.serving_file.write_text(json.dumps(state))
    assert reconcile_serving(store, reg) == v2
    assert reg.serving() == v2 and reg.history() == [v1, v2]
    assert [r["target"] for r in store.audit_rows("promote")] == [v1, v2]
