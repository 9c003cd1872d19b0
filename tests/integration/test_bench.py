"""`moodwire bench throughput` runs on its own and reports what scripts read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import last_json, moodwire_cli

pytestmark = pytest.mark.integration


def test_bench_throughput_small_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = moodwire_cli(
        ["bench", "throughput", "--items", "128", "--latency-items", "24", "--batch-size", "32",
         "--out", str(out), "--data-dir", str(tmp_path)],
        timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    result = last_json(res.stdout)
    assert json.loads(out.read_text()) == result
    for key in (
        "items_per_s",
        "bare_forward_items_per_s",
        "ratio",
        "p50_latency_ms",
        "p99_latency_ms",
        "device",
    ):
        assert key in result
    assert result["items"] == 128 and result["device"] == "cpu"
    assert result["items_per_s"] > 0 and 0 < result["ratio"] < 2
    assert 0 < result["p50_latency_ms"] <= result["p99_latency_ms"]
    # Every stage of the path is accounted for.
    assert set(result["stage_seconds"]) == {
        "validate",
        "model",
        "retrieve",
        "store",
        "publish",
        "commit",
    }
