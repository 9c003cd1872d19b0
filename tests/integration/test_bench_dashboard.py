"""`moodwire bench dashboard` fills a store, serves it and times it in headless Chromium."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import last_json, moodwire_cli

from moodwire.bench.dashboard import CHROMIUM

pytestmark = pytest.mark.integration


def test_bench_dashboard_small_run(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        msg = f"{CHROMIUM} is missing: run scripts/setup.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    out = tmp_path / "dash.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOODWIRE_")}
    res = moodwire_cli(
        ["bench", "dashboard", "--items", "2000", "--warm-loads", "2", "--no-progress",
         "--out", str(out)],
        env=env,
        timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    result = last_json(res.stdout)
    assert json.loads(out.read_text()) == result
    assert result["items"] == 2000 and result["filled"] is True
    assert result["fill_s"] > 0 and result["labels"] > 0 and result["alerts"] > 0
    # Figures, not targets: timings on a loaded machine say nothing here.
    for key in (
        "overview_first_paint_cold_s",
        "overview_complete_cold_s",
        "overview_first_paint_warm_median_s",
        "overview_complete_warm_median_s",
    ):
        assert result[key] > 0, key
    assert len(result["overview_first_paint_warm_s"]) == 2
    assert result["overview_first_paint_cold_s"] <= result["overview_complete_cold_s"]
    assert set(result["page_switch_s"]) == {"alerts", "models", "explore"}
    assert all(v > 0 for v in result["page_switch_s"].values())
    # The overview's charts say what they show: the index over every generated item.
    assert any("2,000 items" in d for d in result["overview_charts"]), result["overview_charts"]
    assert isinstance(result["meets_target"], bool)
