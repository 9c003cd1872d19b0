"""`moodwire bench throughput` runs on its own and reports what scripts read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_bench_throughput_small_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "moodwire",
            "bench",
            "throughput",
            "--items",
            "128",
            "--latency-items",
            "24",
            "--batch-size",
            "32",
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
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
