"""Every detector and every replay buffer through the same checks, on seeded streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learner import replay
from learner.data import LABELS, LabelledText
from learner.drift import DriftDetector, EmbeddingShift, Guarded, NoDrift, RiverDetector

SCALAR = ["adwin", "kswin", "page_hinkley"]


@pytest.mark.parametrize("kind", [*SCALAR, "ddm"])
def test_river_detectors_obey_the_protocol(kind: str) -> None:
    det = RiverDetector(kind)
    assert isinstance(det, DriftDetector)
    assert det.update(0.0) is det and det.drift_detected in (True, False)
    assert isinstance(det.statistic, float)


@pytest.mark.parametrize("kind", SCALAR)
def test_no_event_on_a_stationary_stream_of_5000(kind: str) -> None:
    rng = np.random.default_rng(42)
    det = Guarded(RiverDetector(kind), warmup=100, cooldown=500)
    fired = [i for i, x in enumerate(rng.beta(8, 2, 5000)) if det.update(x).drift_detected]
    assert fired == []


@pytest.mark.parametrize("kind", SCALAR)
def test_abrupt_shift_is_detected_once_and_soon(kind: str) -> None:
    rng = np.random.default_rng(7)
    stream = np.concatenate([rng.beta(8, 2, 2000), rng.beta(4, 4, 1500)])  # confidence drops
    det = Guarded(RiverDetector(kind), warmup=100, cooldown=2000)
    fired = [i for i, x in enumerate(stream) if det.update(x).drift_detected]
    assert len(fired) == 1 and 2000 <= fired[0] < 2300, fired


def test_embedding_shift_quiet_then_fires_on_a_new_domain() -> None:
    rng = np.random.default_rng(1)
    det = Guarded(EmbeddingShift(reference=500, window=100), warmup=0, cooldown=10_000)
    base = rng.normal(size=(5000, 16))
    assert not any(det.update(v).drift_detected for v in base)
    shifted = rng.normal(loc=0.3, size=(400, 16))
    fired = [i for i, v in enumerate(shifted) if det.update(v).drift_detected]
    assert len(fired) == 1 and fired[0] < 300


def test_no_drift_never_fires() -> None:
    det = NoDrift()
    assert not any(det.update(x).drift_detected for x in [0, 1] * 100)


@pytest.mark.parametrize(
    "kind", [replay.Reservoir, replay.ClassBalancedReservoir, replay.DiverseMemory]
)
def test_replay_buffers_bound_memory_sample_and_persist(kind, tmp_path: Path) -> None:  # noqa: ANN001
    buf = kind(capacity=30, seed=0)
    for i in range(1000):
        buf.add(LabelledText(f"text {i}", LABELS[i % 3]))
    assert len(buf) == 30
    assert len(buf.sample(10)) == 10 and len(buf.sample(100)) == 30
    replay.save(buf, tmp_path / "replay.json")
    back = replay.load(tmp_path / "replay.json", default=kind(capacity=30))
    assert sorted(x.text for x in back.items()) == sorted(x.text for x in buf.items())


def test_class_balance_survives_a_flood_of_one_label() -> None:
    buf = replay.ClassBalancedReservoir(capacity=30, seed=0)
    for i in range(30):
        buf.add(LabelledText(f"old {i}", LABELS[i % 3]))
    for i in range(5000):
        buf.add(LabelledText(f"flood {i}", "neutral"))
    labels = [x.label for x in buf.items()]
    assert labels.count("negative") == 10 and labels.count("positive") == 10
