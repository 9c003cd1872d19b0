"""The alert rules in event time: one episode per surge, none on steady keys, explainable."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from stream.alerts import (
    AlertConfig,
    AlertEngine,
    AlertItem,
    negative_share_z,
    volume_z,
)
from stream.synthetic import demo_feed

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CFG = AlertConfig(
    window_s=60, baseline_windows=10, min_baseline_windows=3, lateness_s=5, cooldown_s=300
)


def _items(seed: int, n: int = 3000, **kw) -> tuple[list[AlertItem], list[dict]]:  # noqa: ANN003
    """The demo feed as scored items, labels as a good model would give them."""
    rng = random.Random(seed)
    feed = demo_feed(n, seed=seed, start=START, drift_at=1.0, **kw)
    items = []
    for f in feed:
        label = f["meta"]["true_label"]
        score = {"negative": -0.8, "neutral": 0.0, "positive": 0.8}[label] + rng.gauss(0, 0.15)
        ts = datetime.fromisoformat(f["ts"]).timestamp()
        items.append(AlertItem(f["id"], ts, tuple(f["entities"]), None, label, score, f["text"]))
    return items, feed


def _run(engine: AlertEngine, items: list[AlertItem], batch: int = 64) -> dict:
    alerts = {}
    for i in range(0, len(items), batch):
        engine.add(items[i : i + batch])
        for a in engine.advance():
            alerts[a.id] = a
    for a in engine.flush():
        alerts[a.id] = a
    return alerts


@pytest.mark.parametrize("seed", range(8))
def test_a_surge_raises_one_episode_in_its_first_window_and_steady_entities_none(seed) -> None:  # noqa: ANN001
    items, feed = _items(seed)
    alerts = _run(AlertEngine(CFG), items)
    assert [(a.key, a.kind) for a in alerts.values()] == [("INIT", "negative_surge")]
    (alert,) = alerts.values()
    first_surge = next(x for x, f in zip(items, feed, strict=True) if f["meta"]["phase"] == "surge")
    assert alert.first_window_start == (first_surge.ts // 60) * 60
    assert alert.severity in ("warning", "critical")


def test_event_time_not_arrival_order_decides() -> None:
    items, _ = _items(3)
    shuffled = list(items)
    rng = random.Random(0)
    # Items arrive out of order within the lateness: same alerts, same ids.
    for i in range(0, len(shuffled) - 4, 4):
        chunk = shuffled[i : i + 4]
        rng.shuffle(chunk)
        shuffled[i : i + 4] = chunk
    a = _run(AlertEngine(CFG), items)
    b = _run(AlertEngine(CFG), shuffled, batch=7)
    assert {k: (v.kind, v.statistic, v.revision) for k, v in a.items()} == {
        k: (v.kind, v.statistic, v.revision) for k, v in b.items()
    }


def test_a_long_surge_is_one_alert_that_updates_and_a_late_item_is_counted() -> None:
    items, _ = _items(1, surge_len=400)  # about 200 surge items over 6-7 windows
    engine = AlertEngine(CFG)
    seen: dict[str, list[int]] = {}
    keys: dict[str, tuple[str, str | None]] = {}
    for i in range(0, len(items), 50):
        engine.add(items[i : i + 50])
        for a in engine.advance():
            seen.setdefault(a.id, []).append(a.revision)
            keys[a.id] = (a.scope, a.key)
    init = [k for k in seen if keys[k] == ("entity", "INIT")]
    assert len(init) == 1 and len([k for k in seen]) == 1
    assert seen[init[0]] == sorted(seen[init[0]]) and seen[init[0]][-1] >= 3
    engine.add([AlertItem("late", items[0].ts, ("ACME",), None, "negative", -1.0)])
    assert engine.late == 1


def test_every_number_can_be_recomputed_from_the_items_it_names() -> None:
    items, _ = _items(2)
    by_id = {x.id: x for x in items}
    (alert,) = _run(AlertEngine(CFG), items).values()
    window = [by_id[i] for i in alert.evidence["item_ids"]]
    assert all(alert.window_start <= x.ts < alert.window_end for x in window)
    assert all(alert.key in x.entities for x in window)
    assert len(window) == alert.n == alert.evidence["n"]
    negatives = sum(x.label == "negative" for x in window)
    base = [by_id[i] for w in alert.baseline_windows for i in w["item_ids"]]
    assert sum(w["n"] for w in alert.baseline_windows) == len(base)
    z, p0, p = negative_share_z(
        negatives,
        len(window),
        sum(x.label == "negative" for x in base),
        len(base),
        alert.details["stream_negative_share"],
        CFG.prior_strength,
    )
    sig = alert.signals["negative_surge"]
    assert sig["statistic"] == pytest.approx(z, abs=1e-3)
    assert sig["baseline"] == pytest.approx(p0, abs=1e-5)
    assert sig["value"] == pytest.approx(p, abs=1e-5)
    tops = [t["score"] for t in alert.evidence["top"]]
    assert tops == sorted(tops)  # the most negative first


def test_a_volume_spike_without_a_change_of_mood_is_a_volume_alert() -> None:
    mix = [("neutral", 0.0), ("positive", 0.8), ("negative", -0.8)]
    # A steady stream, ACME a tenth of it; then a burst of ACME items of the usual mood.
    steady = [
        AlertItem(f"b{i}", float(i * 2), ("ACME" if i % 10 == 0 else "GLBX",), None, *mix[i % 3])
        for i in range(700)
    ]
    burst = [AlertItem(f"v{i}", 1201.0 + i, ("ACME",), None, *mix[i % 3]) for i in range(45)]
    engine = AlertEngine(
        AlertConfig(window_s=60, baseline_windows=10, lateness_s=0, min_baseline_windows=3)
    )
    engine.add(steady + burst)
    alerts = engine.flush()
    assert [(a.key, a.kind) for a in alerts] == [("ACME", "volume_spike")]


def test_a_busier_stream_is_not_a_spike_and_a_gap_is_not_a_baseline() -> None:
    mix = [("neutral", 0.0), ("positive", 0.8), ("negative", -0.8)]
    quiet = [
        AlertItem(f"q{i}", float(i * 4), (["ACME", "GLBX", "INIT"][i % 3],), None, *mix[i % 3])
        for i in range(300)
    ]
    # Nothing at all for an hour (a gap in the feed), then the stream four times busier.
    busy = [
        AlertItem(f"b{i}", 4800.0 + i, (["ACME", "GLBX", "INIT"][i % 3],), None, *mix[(i // 3) % 3])
        for i in range(1200)
    ]
    engine = AlertEngine(
        AlertConfig(window_s=60, baseline_windows=10, lateness_s=0, min_baseline_windows=3)
    )
    engine.add(quiet + busy)
    assert engine.flush() == []


def test_statistics_stay_quiet_on_usual_numbers() -> None:
    assert negative_share_z(3, 10, 30, 100, 0.3, 20.0)[0] < 1
    assert volume_z(6, 100, 20, 400)[0] < 1
    assert volume_z(10, 100, 0, 400)[0] > 4  # a key that never came up before


def test_drift_events_make_one_episode_within_the_cooldown() -> None:
    engine = AlertEngine(CFG)
    t = START.timestamp()
    a = engine.drift_alert({"ts": t, "detector": "adwin", "signal": "confidence", "seq": 1})
    b = engine.drift_alert(
        {"ts": t + 30, "detector": "embedding_shift", "signal": "embedding", "seq": 2}
    )
    c = engine.drift_alert(
        {"ts": t + 10_000, "detector": "adwin", "signal": "confidence", "seq": 3}
    )
    assert a.id == b.id != c.id and b.revision == 2 and len(b.signals) == 2
    assert a.kind == "drift"


def test_bad_settings_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="window_s"):
        AlertConfig(window_s=0)
    with pytest.raises(ValueError, match="scopes"):
        AlertConfig(scopes=("entity", "planet"))


def test_a_new_model_version_is_not_taken_for_a_change_of_sentiment() -> None:
    """v1 read sarcasm the wrong way round; v2, promoted, reads it right: the same stream
    now scores lower. Judged against v1's history that is a 'shift' that never happened."""
    cfg = AlertConfig(window_s=60, baseline_windows=6, min_baseline_windows=3, lateness_s=0)

    def stream(version_after: str, start: int, end: int, score: float, label: str) -> list:
        return [
            AlertItem(f"{version_after}-{i}", float(i * 3), ("ACME",), "markets", label,
                      score + (i % 5) * 0.01, "t", model_version=version_after)
            for i in range(start, end)
        ]  # fmt: skip

    before = stream("v1", 0, 200, 0.6, "positive")  # ten windows scored by v1
    swapped = AlertEngine(cfg)
    swapped.add(before + stream("v2", 200, 260, -0.6, "negative"))  # v2 reads them negative
    kinds = {a.kind for a in swapped.flush()}
    assert not kinds & {"sentiment_shift", "negative_surge"}, kinds
    # The same move under one version is a real change of sentiment, and alerts.
    same = AlertEngine(cfg)
    same.add(before + stream("v1", 200, 260, -0.6, "negative"))
    assert {a.kind for a in same.flush()} & {"sentiment_shift", "negative_surge"}
