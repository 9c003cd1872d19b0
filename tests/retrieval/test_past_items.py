"""The index follows the store, survives restarts through snapshots, and rebuilds when lost."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from retrieval.past_items import PastItems
from state.store import Store, encode_embedding

DIM = 8


def _rows(start: int, n: int, rng: np.random.Generator) -> list[dict]:
    now = datetime.now(UTC)
    out = []
    for i in range(start, start + n):
        v = rng.standard_normal(DIM).astype(np.float32)
        out.append(
            {
                "id": f"i{i}",
                "text": "t",
                "ts": now,
                "source": None,
                "entities": [],
                "meta": {},
                "label": ("negative", "neutral", "positive")[i % 3],
                "p_negative": 0.2,
                "p_neutral": 0.6,
                "p_positive": 0.2,
                "confidence": 0.6,
                "model_version": "v1",
                "neighbors": [],
                "embedding": encode_embedding(v / np.linalg.norm(v)),
                "src_partition": 0,
                "src_offset": i,
                "kafka_ts": now,
                "scored_at": now,
            }
        )
    return out


def test_catch_up_snapshot_and_rebuild(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.write_batch(_rows(0, 50, rng), [])
    snap = tmp_path / "index"
    past = PastItems(store, dim=DIM, space_id="s", snapshot_dir=snap, snapshot_every=100)
    assert len(past) == 50
    store.write_batch(_rows(50, 30, rng), [])  # written by another worker, say
    assert past.catch_up() == 30 and len(past) == 80
    past.save()
    store.write_batch(_rows(80, 5, rng), [])

    restarted = PastItems(store, dim=DIM, space_id="s", snapshot_dir=snap)
    assert len(restarted) == 85  # snapshot (80) + what the store gained since (5)

    query = np.frombuffer(_rows(0, 1, np.random.default_rng(0))[0]["embedding"], np.float16)
    hits = restarted.neighbors(query[None, :].astype(np.float32), k=3, exclude=["i0"])[0]
    assert len(hits) == 3 and "i0" not in {h.id for h in hits}
    assert all(h.label in ("negative", "neutral", "positive") for h in hits)
    hits_with_self = restarted.neighbors(query[None, :].astype(np.float32), k=1)[0]
    assert hits_with_self[0].id == "i0" and hits_with_self[0].similarity > 0.99

    (snap / "index.faiss").write_bytes(b"garbage")  # a corrupt snapshot is rebuilt, not trusted
    rebuilt = PastItems(store, dim=DIM, space_id="s", snapshot_dir=snap)
    assert len(rebuilt) == 85


class _CountingStore:
    """The real store, counting the rows ``embeddings_after`` hands back."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.read: list[int] = []

    def embeddings_after(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for row in self.store.embeddings_after(*args, **kwargs):  # type: ignore[arg-type]
            self.read.append(row[0])
            yield row


def _write(store: Store, rows: list[dict]) -> list[tuple[int, str, str, bytes]]:
    seqs: dict[str, int] = {}
    new, _, _ = store.write_batch(rows, [], written_seqs=seqs)
    assert set(seqs) == new == {r["id"] for r in rows}
    return [(seqs[r["id"]], r["id"], r["label"], r["embedding"]) for r in rows]


def test_a_writer_adds_its_own_rows_without_reading_them_back(tmp_path: Path) -> None:
    """Only other writers' rows come from the store, yet the index is what a rebuild makes."""
    rng = np.random.default_rng(1)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    counting = _CountingStore(store)
    past = PastItems(counting, dim=DIM, space_id="s")  # type: ignore[arg-type]
    own: list[int] = []
    theirs: list[int] = []
    for b in range(6):
        mine = _write(store, _rows(100 * b, 20, rng))
        own += [s for s, *_ in mine]
        if b % 2:  # another worker stores a batch between two of ours
            other = _write(store, _rows(100 * b + 50, 7, rng))
            theirs += [s for s, *_ in other]
        assert past.catch_up(mine) == 20 + (7 if b % 2 else 0)
    assert sorted(counting.read) == sorted(theirs)  # not one of its own rows read back
    assert len(past) == len(own) + len(theirs)
    # A second writer's rows stored before ours, with lower seqs, are not skipped.
    early = _write(store, _rows(900, 3, rng))
    late = _write(store, _rows(950, 4, rng))
    assert past.catch_up(late) == 7 and {s for s, *_ in early} <= set(counting.read)

    rebuilt = PastItems(store, dim=DIM, space_id="s")
    query = np.stack([np.frombuffer(r["embedding"], np.float16) for r in _rows(0, 5, rng)])
    query = query.astype(np.float32)
    assert past.neighbors(query, k=5) == rebuilt.neighbors(query, k=5)
    # A row given again (a retried batch) is not added twice.
    assert past.catch_up(late) == 0 and len(past) == len(rebuilt)


class _FailingAfter(_CountingStore):
    """The real store until its ``fail_at``-th query, which meets an outage."""

    def __init__(self, store: Store, fail_at: int) -> None:
        super().__init__(store)
        self.calls, self.fail_at = 0, fail_at

    def embeddings_after(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionError("store went away")
        yield from super().embeddings_after(*args, **kwargs)


def test_an_outage_half_way_through_catching_up_loses_no_item(tmp_path: Path) -> None:
    """Another writer's rows come in on the first query and the store fails on the next:
    the writer's own rows, never read back, must still reach the index later."""
    rng = np.random.default_rng(2)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    failing = _FailingAfter(store, fail_at=3)  # 1: at start; 2: first page; 3: the next
    past = PastItems(failing, dim=DIM, space_id="s")  # type: ignore[arg-type]
    mine = _write(store, _rows(0, 5, rng))
    _write(store, _rows(50, 3, rng))  # another worker, after us
    with pytest.raises(ConnectionError):
        past.catch_up(mine)
    assert len(past) == 0  # nothing half-added
    later = _write(store, _rows(100, 4, rng))
    assert past.catch_up(later) == 12 and len(past) == 12
    assert len(past) == len(PastItems(store, dim=DIM, space_id="s"))
