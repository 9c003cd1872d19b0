"""The index follows the store, survives restarts through snapshots, and rebuilds when lost."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

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
