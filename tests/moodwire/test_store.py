"""The store's contract, on SQLite and on the local PostgreSQL server alike."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from state.store import Store, decode_embeddings, encode_embedding


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    if request.param == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'm.db'}")
    return Store(request.getfixturevalue("pg_fresh"))  # a database of its own: empty


def _row(i: int, label: str = "neutral", version: str = "v1") -> dict:
    now = datetime.now(UTC)
    return {
        "id": f"item-{i}",
        "text": f"text {i}",
        "ts": now,
        "source": "t",
        "entities": ["ACME"],
        "meta": {},
        "label": label,
        "p_negative": 0.1,
        "p_neutral": 0.8,
        "p_positive": 0.1,
        "confidence": 0.8,
        "model_version": version,
        "neighbors": [],
        "embedding": encode_embedding(np.full(4, i, dtype=np.float32)),
        "src_partition": 0,
        "src_offset": i,
        "kafka_ts": now,
        "scored_at": now,
    }


def _rej(offset: int, reason: str = "malformed_json") -> dict:
    return {
        "topic": "news",
        "partition": 0,
        "offset": offset,
        "reason": reason,
        "detail": "x",
        "raw": "{",
        "rejected_at": datetime.now(UTC),
    }


def test_write_is_idempotent_and_reports_replays(store: Store) -> None:
    new, replayed, rej = store.write_batch([_row(1), _row(2)], [_rej(7)])
    assert new == {"item-1", "item-2"} and replayed == set() and len(rej) == 1
    # The same batch again before it was published: nothing new, both flagged as replays.
    new, replayed, rej2 = store.write_batch([_row(1), _row(2)], [_rej(7)])
    assert new == set() and replayed == {"item-1", "item-2"} and rej2 == rej
    store.mark_published(["item-1", "item-2"], rej)
    new, replayed, rej3 = store.write_batch([_row(1), _row(3)], [_rej(7)])
    assert new == {"item-3"} and replayed == set() and rej3 == []
    assert store.count_items() == 3
    assert len(store.rejections()) == 1


def test_stats_counts_by_label_version_and_reason(store: Store) -> None:
    store.write_batch(
        [_row(1, "negative"), _row(2, "positive", "v2"), _row(3, "positive")],
        [_rej(1), _rej(2, "oversized")],
    )
    stats = store.stats()
    assert stats["items"] == 3 and stats["rejected"] == 2
    assert stats["by_label"] == {"negative": 1, "positive": 2}
    assert stats["by_model_version"] == {"v1": 2, "v2": 1}
    assert stats["rejected_by_reason"] == {"malformed_json": 1, "oversized": 1}
    assert stats["unpublished"] == 3


def test_embeddings_round_trip_in_arrival_order(store: Store) -> None:
    store.write_batch([_row(i) for i in range(5)], [])
    rows = list(store.embeddings_after(-1))
    assert [r[1] for r in rows] == [f"item-{i}" for i in range(5)]
    vectors = decode_embeddings([r[3] for r in rows], 4)
    np.testing.assert_allclose(vectors[:, 0], np.arange(5))
    assert [r[1] for r in store.embeddings_after(rows[2][0])] == ["item-3", "item-4"]


def test_items_keep_utc_times(store: Store) -> None:
    row = _row(1)
    store.write_batch([row], [])
    got = store.get_item("item-1")
    assert got is not None and got["ts"] == row["ts"] and got["ts"].tzinfo is not None


def test_audit_log(store: Store) -> None:
    store.audit("alice", "promote", "v2", "better on new data", {"previous": "v1"})
    import sqlalchemy as sa

    from state.store import audit_log

    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log)).mappings().all()
    assert [(r["actor"], r["action"], r["target"]) for r in rows] == [("alice", "promote", "v2")]


def test_unknown_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unsupported store URL"):
        Store("mysql://x/y")


def test_alerts_are_acknowledged_and_muted_by_id(store: Store) -> None:
    from datetime import timedelta

    t = datetime(2026, 1, 5, 9, 0, tzinfo=UTC).isoformat()
    store.upsert_alert(
        {"id": "al-1", "kind": "negative_surge", "scope": "entity", "entity": "ACME",
         "severity": "warning", "window_start": t, "window_end": t, "first_window_start": t,
         "statistic": 5.0, "baseline": 0.2, "revision": 1}
    )  # fmt: skip
    assert not store.acknowledge_alert("al-missing", "ann")
    assert store.acknowledge_alert("al-1", "ann")
    assert store.alert_rows()[0]["acknowledged_by"] == "ann"
    assert not store.alert_muted("al-1")
    now = datetime.now(UTC)
    assert store.mute_alert("al-1", now + timedelta(hours=1))
    assert store.alert_muted("al-1") and not store.alert_muted("al-1", now + timedelta(hours=2))
    assert store.alert_rows()[0]["muted_until"] is not None
    store.mute_alert("al-1", None)
    assert not store.alert_muted("al-1")
