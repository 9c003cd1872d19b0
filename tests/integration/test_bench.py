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
         "--sweep-batches", "16,64", "--while-training", "4",
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
        "path_cost_in_classifier_forwards",
        "peer_items_per_s",
        "peer_ratio",
        "p50_latency_ms",
        "p99_latency_ms",
        "device",
    ):
        assert key in result
    assert result["items"] == 128 and result["device"] == "cpu"
    # The ratios are benchmark figures, not targets here: on a loaded machine the bare
    # forward run, the path run and the peer's see different loads.
    for key in (
        "items_per_s",
        "ratio",
        "path_cost_in_classifier_forwards",
        "peer_items_per_s",
        "peer_ratio",
    ):
        assert result[key] > 0, key
    # The peer read the same topic in its own group: every item stored once, and the
    # offsets it committed (read back from the broker) are past every record it read.
    peer = result["peer"]
    assert peer["items"] == peer["stored_items"] == peer["stored_distinct_ids"] == 128
    assert peer["committed_all_read"] is True
    assert sum(peer["committed_offsets"].values()) == 128
    assert peer["batch_size"] == 32 and peer["batches"] >= 4
    assert 0 < result["p50_latency_ms"] <= result["p99_latency_ms"]
    # Every record of the path run went through a batch; the CPU the run took is counted
    # (this process's, and the broker's that shares the machine).
    assert result["path_batches"] * result["path_mean_batch"] == 128
    assert result["path_process_cpu_s"] > 0 and result["path_broker_cpu_s"] >= 0
    # The sweep and the learner's load ran (their rates are benchmark figures, not targets).
    assert set(result["batch_sweep_items_per_s"]) == {"16", "64"}
    training = result["while_training"]
    assert training["items_per_s"] > 0 and training["training_samples_per_s"] > 0
    assert result["scoring_while_training_ratio"] == training["ratio"] > 0
    # Every stage of the path is accounted for.
    assert set(result["stage_seconds"]) == {
        "validate",
        "model",
        "retrieve",
        "store",
        "publish",
        "commit",
        "index",
        "drift",
        "alerts",
    }


def _phase_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def test_bench_continual_small_run(tmp_path: Path) -> None:
    """Two generated phases (news, then chatter): every strategy reports what the issue asks."""
    from stream.synthetic import demo_feed, labelled_headlines

    news = [(r["text"], r["label"]) for r in labelled_headlines(300, seed=1)]
    chatter = [
        (i["text"], i["meta"]["true_label"])
        for i in demo_feed(300, seed=2, drift_at=0.0)
        if i["meta"]["phase"] == "chatter"
    ]
    a = _phase_csv(tmp_path / "news.csv", news)
    b = _phase_csv(tmp_path / "chatter.csv", chatter)
    out = tmp_path / "continual.json"
    res = moodwire_cli(
        ["bench", "continual", "--phases", str(a), str(b), "--out", str(out),
         "--null-items", "400", "--bootstrap-epochs", "1", "--time-budget", "8",
         "--retrain-every", "120", "--min-new-labels", "40", "--label-delay", "20",
         "--reserve", "0.25",
         "--data-dir", str(tmp_path)],
        timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    result = last_json(res.stdout)
    assert json.loads(out.read_text()) == result
    assert set(result["strategies"]) == {"frozen", "naive", "moodwire", "joint"}
    assert result["phase_starts"] == [0, 240]  # 80 % of 300 streamed per phase
    # A quarter of phase A's stream part is the learner's held-out memory, not trained on.
    boot = result["bootstrap"]
    assert boot["trained_on"] + boot["reserved_as_heldout_memory"] == 240
    assert abs(boot["reserved_as_heldout_memory"] - 60) <= 2
    for name, s in result["strategies"].items():
        m = s["acc_matrix"]
        assert len(m) == 2 and all(len(row) == 2 for row in m), name
        assert all(0.0 <= x <= 1.0 for row in m for x in row)
        assert s["final_avg_acc"] == pytest.approx(sum(m[-1]) / 2, abs=1e-3)
        assert s["forgetting"] == pytest.approx(m[0][0] - m[1][0], abs=1e-3)
        # Every version that served on the way counts for the peak, so it is at least as high.
        assert s["forgetting_from_peak"] >= s["forgetting"] - 1e-9
        for p in s["promotions"]:
            assert len(p["heldout_acc"]) == 2 and all(0 <= a <= 1 for a in p["heldout_acc"])
        peak = max(
            [m[0][0], result["bootstrap"]["heldout_acc"][0]]
            + [p["heldout_acc"][0] for p in s["promotions"]]
        )
        assert s["forgetting_from_peak"] == pytest.approx(peak - m[1][0], abs=1e-3)
    assert result["strategies"]["frozen"]["promotions"] == []
    assert (
        result["strategies"]["frozen"]["acc_matrix"][0]
        == result["strategies"]["frozen"]["acc_matrix"][1]
    )
    for event in result["drift_events"]:
        assert {"position", "detector", "signal", "statistic"} <= set(event)
    (first,) = result["first_drift_after_phase_start"]
    assert first is None or (isinstance(first, int) and first >= 0)
    assert result["null_stream"]["items"] == 400
    assert Path(result["plot"]).is_file() and Path(result["plot"]).stat().st_size > 10_000
