"""``moodwire bench retrieval`` at tiny sizes: its JSON, its recall, its vectors.

Nothing here is timed: the latencies are only checked to be there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moodwire.bench.retrieval import (
    generated_anchors,
    grow,
    parse_sizes,
    recall_at_k,
    retrieval_bench,
)
from moodwire.cli import main


def test_recall_on_a_constructed_case() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    found = np.array(
        [
            [4, 3, 2, 1],  # all four, in another order
            [5, 6, 99, -1],  # two, a wrong one and a missing hit
            [13, 14, 15, 16],  # none
        ]
    )
    assert recall_at_k(truth, found) == pytest.approx((4 + 2 + 0) / 12)
    assert recall_at_k(truth, truth) == 1.0


def test_sizes_parse_and_refuse() -> None:
    assert parse_sizes("100k, 1M,2500,1.5k") == [100_000, 1_000_000, 2500, 1500]
    with pytest.raises(ValueError, match="not a size"):
        parse_sizes("lots")
    with pytest.raises(ValueError, match="too small"):
        parse_sizes("5")


def test_grow_keeps_anchors_and_gives_unit_vectors_near_them() -> None:
    rng = np.random.default_rng(0)
    anchors = generated_anchors(500, 32, rng)
    grown = grow(anchors, 3000, rng)
    assert grown.shape == (3000, 32) and grown.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(grown, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(grown[:500], anchors)
    # Every grown vector lies nearer its anchors than a random direction would.
    nearest = (grown[500:] @ anchors.T).max(axis=1)
    assert nearest.min() > 0.5
    assert len(np.unique(grown, axis=0)) == 3000  # no copies


def test_bench_at_tiny_sizes(tmp_path: Path) -> None:
    result = retrieval_bench(
        sizes=[3000, 600],
        queries=80,
        single_queries=5,
        data_dir=None,
        out=tmp_path / "r.json",
        progress=False,
    )
    assert result["source"]["kind"] == "generated"
    assert result["source"]["queries"] == 80
    assert result["sizes"] == [600, 3000]
    assert Path(result["plot"]).is_file()
    rows = {(r["kind"], r["n"]): r for r in result["results"]}
    assert set(rows) == {(k, n) for k in ("flat", "ivf", "hnsw") for n in (600, 3000)}
    for (kind, n), row in rows.items():
        assert set(row) >= {"params", "build_s", "index_bytes", "recall_at_10", "batch", "single"}
        assert row["index_bytes"] > n * 32 * 4
        assert set(row["single"]) == {"count", "p50_ms", "p99_ms"} and row["single"]["count"] == 5
        assert row["batch"]["queries_per_call"] == 64
        if kind == "flat":
            assert row["recall_at_10"] == 1.0
            assert "sweep" not in row
        else:
            assert 0.0 <= row["recall_at_10"] <= 1.0
            assert row["sweep"] and all(0.0 <= s["recall_at_10"] <= 1.0 for s in row["sweep"])
    assert rows[("ivf", 3000)]["params"]["nlist"] > 0
    json.dumps(result)  # all of it is JSON


def test_queries_are_held_out_of_the_index() -> None:
    from moodwire.bench.retrieval import vectors

    base, queries, source = vectors([5000], 100, data_dir=None, device="cpu", seed=1)
    assert base.shape == (5000, 384) and queries.shape == (100, 384)
    # No query is indexed, nor anything nearly identical to one.
    assert float((queries @ base.T).max()) < 0.999
    assert "held_out" in source


def test_cli_writes_json_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench" / "retrieval.json"
    argv = ["bench", "retrieval", "--generated", "--sizes", "700", "--kinds", "flat,ivf"]
    argv += ["--queries", "30", "--single-queries", "3", "--out", str(out)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed
    assert out.with_suffix(".png").is_file()
    assert [r["kind"] for r in printed["results"]] == ["flat", "ivf"]


def test_cli_refuses_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "retrieval", "--kinds", "flat,annoy"]) == 2
    assert "--kinds" in capsys.readouterr().err
