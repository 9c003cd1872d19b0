"""The overview page renders on an empty and on a populated store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from moodwire.store import Store, encode_embedding

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    monkeypatch.setenv("MOODWIRE_STORE_URL", url)
    return url


def test_empty_store_says_how_to_start(store_url: str) -> None:
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert any("No items yet" in i.value for i in at.info)


def test_populated_store_shows_counts_and_items(store_url: str) -> None:
    store = Store(store_url)
    t0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    rows = []
    for i in range(120):
        label = ("negative", "neutral", "positive")[i % 3]
        rows.append(
            {
                "id": f"x{i}",
                "text": f"headline {i}",
                "ts": t0 + timedelta(seconds=20 * i),
                "source": "t",
                "entities": ["ACME"],
                "meta": {},
                "label": label,
                "p_negative": 0.7 if label == "negative" else 0.1,
                "p_neutral": 0.2,
                "p_positive": 0.7 if label == "positive" else 0.1,
                "confidence": 0.7,
                "model_version": "v1",
                "neighbors": [],
                "embedding": encode_embedding(np.ones(4, np.float32)),
                "src_partition": 0,
                "src_offset": i,
                "kafka_ts": t0,
                "scored_at": t0,
            }
        )
    store.write_batch(rows, [])
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["items scored"] == "120"
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 50
