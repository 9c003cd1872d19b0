"""The dashboard's SQL aggregates give the same answers on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import DASH_T0, populate_dashboard_store

from dashboard import data
from state.store import Store

END = DASH_T0 + timedelta(minutes=300)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'd.db'}"
    else:
        from state.store import metadata

        url = request.getfixturevalue("pg_url")
        metadata.drop_all(Store(url).engine)  # the database is shared by the session
    populate_dashboard_store(Store(url), tmp_path / "registry")
    data.st.cache_data.clear()
    return url


def test_series_bucket_in_sql_per_scope(url: str) -> None:
    lo, hi = data.time_bounds(url)
    assert (lo, hi) == (DASH_T0, DASH_T0 + timedelta(minutes=299))
    every = data.sentiment_series(url, DASH_T0, END, 3600)
    assert list(every["volume"]) == [60] * 5 and every["time"].iloc[0] == DASH_T0
    init = data.sentiment_series(url, DASH_T0, END, 3600, "entity", "INIT")
    assert init["volume"].sum() == 120
    # The last hour of INIT: 30 negatives of the episode and 10 ordinary items.
    assert init["negative_share"].iloc[-1] == pytest.approx(
        (30 + sum(1 for i in range(272, 300, 3) if i % 4 == 0)) / 40
    )
    legal = data.sentiment_series(url, DASH_T0, END, 600, "topic", "legal_regulatory")
    assert legal["volume"].sum() == 30 and legal["score"].max() == pytest.approx(-0.7)


def test_movers_rank_by_change_against_the_window_before(url: str) -> None:
    start = END - timedelta(hours=1)
    moved = data.movers(url, start, END)
    assert moved.iloc[0]["entity"] == "INIT" and moved.iloc[0]["change"] < -0.3
    assert set(moved["entity"]) == {"ACME", "GLBX", "INIT"}
    assert data.entity_choices(url)[0] in {"ACME", "GLBX", "INIT"}


def test_timeline_accuracy_and_search(url: str) -> None:
    events = data.timeline(url)
    assert list(events["event"]) == ["promote", "drift"]
    acc = data.accuracy_by_version(url, 3600)
    assert acc.groupby("version")["labels"].sum().to_dict() == {"v1": 40, "v2": 20}
    assert (acc["accuracy"] == 1.0).all()  # the labels agree with the scores here
    hits = data.search_text(url, "SUED", entity="INIT", source="wire")
    assert len(hits) == 15 and hits["ts"].is_monotonic_decreasing
    assert data.search_text(url, "sued", label="positive").empty
    assert len(data.search_text(url, "", start=END - timedelta(minutes=10))) == 10


def test_the_dashboard_imports_no_training_code() -> None:
    """Not its pages' modules, and not the server's warm-up (a chart built and serialised)."""
    code = (
        "import sys, dashboard.data, dashboard.ui, dashboard.charts, stream.operations;"
        "from moodwire.serve_dashboard import warm_up; assert warm_up() > 0;"
        "assert 'pyarrow' in sys.modules;"
        "bad = [m for m in sys.modules if m in ('torch', 'transformers') "
        "or m.startswith(('learner.classifier', 'learner.train', 'learner.continual'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_volume_spike_is_charted_as_the_keys_share_of_the_stream() -> None:
    from dashboard import charts

    alert = {
        "kind": "volume_spike", "scope": "entity", "entity": "ACME", "value": 30.0,
        "baseline": 10.0, "window_start": "2026-01-01T00:10:00+00:00", "n": 30,
        "evidence": {"stream_n": 100},
        "baseline_windows": [
            {"start": "2026-01-01T00:00:00+00:00", "n": 20, "stream_n": 200},
            {"start": "2026-01-01T00:05:00+00:00", "n": 5, "stream_n": 50},
        ],
    }  # fmt: skip
    chart = charts.alert_windows(alert)
    assert chart.description == (
        "volume_spike on ACME: share of the stream's items 0.3 against baseline 0.1 over 2 "
        "baseline windows"
    )
    assert list(chart.layer[0].data["value"]) == [0.1, 0.1, 0.3]
    del alert["evidence"]["stream_n"]  # an alert stored before windows carried the stream's count
    assert list(charts.alert_windows(alert).layer[0].data["value"]) == [20, 5, 30]
