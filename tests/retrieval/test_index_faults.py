"""A damaged, tampered or half-written index snapshot is rebuilt from the store, never
trusted; a full disk fails a snapshot, never the worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import small_disk
from structlog.testing import capture_logs
from test_past_items import DIM, _rows

from retrieval.past_items import PastItems
from state.store import Store


def _past(store: Store, snapshots: Path) -> PastItems:
    return PastItems(store, dim=DIM, space_id="s", snapshot_dir=snapshots, snapshot_every=100)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Store, Path]:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.write_batch(_rows(0, 300, np.random.default_rng(0)), [])
    snapshots = tmp_path / "index"
    past = _past(store, snapshots)
    assert past.save()
    return store, snapshots


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: _flip(d / "index.faiss"),
        lambda d: (d / "index.faiss").write_bytes((d / "index.faiss").read_bytes()[:1000]),
        lambda d: (d / "index.json").write_text("{not json"),
        lambda d: (d / "index.json").write_text(json.dumps([1, 2])),
        lambda d: (d / "index.json").write_text(
            json.dumps({**json.loads((d / "index.json").read_text()), "ntotal": 5})
        ),
    ],
    ids=["flipped byte", "truncated", "garbage meta", "meta not an object", "count edited"],
)
def test_a_damaged_snapshot_is_rebuilt_from_the_store(saved: tuple[Store, Path], damage) -> None:  # noqa: ANN001
    store, snapshots = saved
    damage(snapshots)
    with capture_logs() as logs:
        past = _past(store, snapshots)
    assert len(past) == 300 and past.last_seq == 300
    assert any(e["event"].endswith("_rebuilding") for e in logs), [e["event"] for e in logs]
    # Every item is found exactly once (an index rebuilt on top of a stale one would
    # hold some twice).
    _, vectors = store.embeddings_by_ids([f"i{i}" for i in range(300)])
    hits = past.neighbors(vectors[:20], 5)
    assert all(len({n.id for n in row}) == len(row) == 5 for row in hits)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB filesystem: writes on it fail with ENOSPC, as on a full disk."""
    with small_disk(tmp_path / "full", "64k") as mount:
        yield mount


def test_a_full_disk_fails_the_snapshot_not_the_caller(tmp_path: Path, full_disk: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.write_batch(_rows(0, 300, np.random.default_rng(1)), [])
    with capture_logs() as logs:
        past = _past(store, full_disk / "index")  # 300 vectors of 8 floats need ~10 KiB
        store.write_batch(_rows(300, 3000, np.random.default_rng(2)), [])
        past.catch_up()  # ~100 KiB of index: more than the disk has
    assert len(past) == 3300
    assert any(e["event"] == "index_snapshot_failed" for e in logs)
    assert not list((full_disk / "index").glob("*.tmp"))  # no half file left taking space
