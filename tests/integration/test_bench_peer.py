"""The throughput bench's peer stores every item once, as scored, and commits what it read.

Real parts: the session's embedded broker, the default encoder with a seeded head (its
probabilities differ per column, so a column mix-up shows), a SQLite store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import produce_items, read_all

from learner.classifier import SentimentClassifier
from moodwire.bench.peer import Peer, committed_offsets
from retrieval.embedder import FrozenEmbedder
from stream.clients import as_kafka

pytestmark = pytest.mark.integration


def test_peer_stores_each_item_once_as_scored_and_commits_its_offsets(
    broker: str, tmp_path: Path, unique: str
) -> None:
    topic, group = f"news-peer-{unique}", f"peer-{unique}"
    items = [
        {"id": f"p-{i}", "text": f"ACME item {i}: shares move {i % 7} percent"} for i in range(70)
    ]
    items[3]["ts"] = "2024-05-01T12:00:00+00:00"
    produce_items(broker, topic, items)  # four partitions
    clf = SentimentClassifier.from_encoder(device="cpu", seed=3)
    peer = Peer(
        clf.model,
        clf.tokenizer,
        device=clf.device,
        store_url=f"sqlite:///{tmp_path / 'peer.db'}",
        model_version="v-test",
        neighbors_k=3,
    )
    run = peer.consume(as_kafka(broker), topic, group_id=group, batch_size=16, expected=70)

    assert run.items == 70 and run.batches >= 5  # 70 in batches of at most 16
    ids = [i["id"] for i in items]
    order = peer.store.item_ids()  # in the order stored
    assert sorted(order) == sorted(ids) and peer.store.count_items() == 70
    stored = {i: peer.store.get_item(i) for i in ids}
    texts = [i["text"] for i in items]
    want = clf.predict_proba(texts)
    got = np.array(
        [[stored[i][f"p_{c}"] for c in ("negative", "neutral", "positive")] for i in ids]
    )
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert [stored[i]["label"] for i in ids] == clf.predict(texts)
    assert all(stored[i]["model_version"] == "v-test" for i in ids)
    assert stored["p-3"]["ts"].isoformat() == "2024-05-01T12:00:00+00:00"
    _, vectors = peer.store.embeddings_by_ids(ids)
    np.testing.assert_allclose(vectors, FrozenEmbedder().embed(texts), atol=2e-3)
    # Neighbours are items stored before (an earlier batch): none in the first batch only.
    place = {i: n for n, i in enumerate(order)}
    with_neighbors = [i for i in ids if stored[i]["neighbors"]]
    assert len(with_neighbors) >= 70 - 16
    for i in ids:
        near = stored[i]["neighbors"]
        assert len(near) <= 3 and all(place[n["id"]] < place[i] for n in near)

    # Read back from the broker: every partition committed past its last record.
    ends: dict[int, int] = {}
    for rec in read_all(broker, topic):
        ends[rec.partition] = max(ends.get(rec.partition, 0), rec.offset + 1)
        assert json.loads(rec.value)["id"] in stored
    assert committed_offsets(as_kafka(broker), topic, group) == ends
    assert run.positions == ends
