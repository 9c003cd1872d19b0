"""Drift detectors: one small protocol, River where River has a detector, our own where not.

Every detector obeys :class:`DriftDetector`: ``update(x) -> self`` and a
read-only ``drift_detected`` that is true on the single update at which a
drift fires. :class:`Guarded` adds warm-up and cool-down so one shift gives one
event, not a storm. :class:`NoDrift` switches detection off.

>>> det = Guarded(RiverDetector("adwin"), warmup=10, cooldown=50)
>>> fired = [i for i, x in enumerate([0.0] * 300 + [1.0] * 300) if det.update(x).drift_detected]
>>> len(fired), 300 <= fired[0] < 400
(1, True)
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DriftDetector(Protocol):
    """A detector of change in a stream of values."""

    name: str

    def update(self, x: float) -> DriftDetector: ...

    @property
    def drift_detected(self) -> bool: ...

    @property
    def statistic(self) -> float: ...


def _river(name: str) -> Any:
    """A fresh river detector (river is imported on first use: it is slow to import)."""
    from river import drift
    from river.drift import binary

    if name == "adwin":
        return drift.ADWIN(delta=0.002)
    if name == "kswin":
        return drift.KSWIN(alpha=0.0001, seed=0)
    if name == "page_hinkley":
        return drift.PageHinkley(threshold=20.0)
    return binary.DDM()


_RIVER = ("adwin", "kswin", "page_hinkley", "ddm")


class RiverDetector:
    """A River drift detector behind the protocol (``adwin``, ``kswin``, ``page_hinkley``, ``ddm``).

    >>> RiverDetector("ddm").update(1.0).drift_detected
    False
    """

    def __init__(self, kind: str = "adwin") -> None:
        if kind not in _RIVER:
            raise ValueError(f"unknown River detector {kind!r}; choose from {sorted(_RIVER)}")
        self.kind = kind
        self.name = kind
        self._det = _river(kind)
        self._last = 0.0

    def update(self, x: float) -> RiverDetector:
        self._last = float(x)
        self._det.update(bool(x) if self.kind == "ddm" else float(x))
        return self

    @property
    def drift_detected(self) -> bool:
        return bool(self._det.drift_detected)

    @property
    def statistic(self) -> float:
        est = getattr(self._det, "estimation", None)
        return float(est) if est is not None else self._last

    def reset(self) -> None:
        self._det = _river(self.kind)

    def __repr__(self) -> str:
        return f"RiverDetector(kind={self.kind!r})"


class EmbeddingShift:
    """Distance of the recent embeddings' mean to a reference window's mean.

    River has no multivariate test, so this one is ours: after ``reference``
    items the reference mean is frozen and a null distribution of the
    statistic is estimated from random windows of the reference itself; drift
    fires when the mean of the last ``window`` items is farther from the
    reference mean than ``z`` standard deviations above that null.

    >>> rng = np.random.default_rng(0)
    >>> det = EmbeddingShift(reference=300, window=50)
    >>> a = rng.normal(size=(900, 8)); b = rng.normal(loc=0.5, size=(300, 8))
    >>> fired = [i for i, v in enumerate(np.vstack([a, b])) if det.update(v).drift_detected]
    >>> fired[0] >= 900
    True
    """

    name = "embedding_shift"

    def __init__(
        self, reference: int = 500, window: int = 100, z: float = 6.0, seed: int = 0
    ) -> None:
        if reference < 2 * window:
            raise ValueError("reference must hold at least two windows")
        self.reference = reference
        self.window = window
        self.z = z
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._ref: list[np.ndarray] = []
        self._recent: deque[np.ndarray] = deque(maxlen=self.window)
        self._mean: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._null_mu = 0.0
        self._null_sd = 1.0
        self._stat = 0.0
        self._fired = False

    def _calibrate(self) -> None:
        # The reference mean comes from the first half of the reference and the null
        # distribution from windows of the second half: those windows are independent of
        # the mean, exactly like a fresh window, so the null is not too narrow.
        ref = np.stack(self._ref)
        half = len(ref) // 2
        self._mean = ref[:half].mean(axis=0)
        rest = ref[half:]
        size = min(self.window, len(rest))
        rng = np.random.default_rng(self.seed)
        draws = [
            float(
                np.linalg.norm(
                    rest[rng.choice(len(rest), size, replace=False)].mean(0) - self._mean
                )
            )
            for _ in range(200)
        ]
        self._null_mu = float(np.mean(draws))
        self._null_sd = float(np.std(draws)) or 1e-9

    def update(self, x: np.ndarray) -> EmbeddingShift:  # type: ignore[override]
        x = np.asarray(x, dtype=np.float64)
        self._fired = False
        if self._mean is None:
            self._ref.append(x)
            if len(self._ref) >= self.reference:
                self._calibrate()
            return self
        # A running sum over the window: O(dim) per item, not O(window * dim).
        if len(self._recent) == self.window:
            self._sum -= self._recent[0]
        self._recent.append(x)
        self._sum = x.copy() if self._sum is None else self._sum + x
        if len(self._recent) == self.window:
            dist = float(np.linalg.norm(self._sum / self.window - self._mean))
            self._stat = (dist - self._null_mu) / self._null_sd
            self._fired = self._stat > self.z
        return self

    @property
    def drift_detected(self) -> bool:
        return self._fired

    @property
    def statistic(self) -> float:
        return self._stat


class Guarded:
    """Warm-up and cool-down around a detector: one shift, one event.

    Nothing fires in the first ``warmup`` updates; after a drift the inner
    detector is reset and nothing fires for ``cooldown`` updates.
    """

    def __init__(self, inner: DriftDetector, warmup: int = 100, cooldown: int = 500) -> None:
        self.inner = inner
        self.warmup = warmup
        self.cooldown = cooldown
        self.name = inner.name
        self._n = 0
        self._quiet_until = warmup
        self._fired = False
        self._at_fire = (0.0, 0)

    def update(self, x: float) -> Guarded:
        self._n += 1
        self.inner.update(x)
        self._fired = self._n > self._quiet_until and self.inner.drift_detected
        if self._fired:
            # What the event reports is read before the reset wipes it.
            self._at_fire = (float(self.inner.statistic), detector_window(self.inner))
            self._quiet_until = self._n + self.cooldown
            reset = getattr(self.inner, "reset", None)
            if reset is not None:
                reset()
        return self

    @property
    def drift_detected(self) -> bool:
        return self._fired

    @property
    def statistic(self) -> float:
        return self._at_fire[0] if self._fired else self.inner.statistic

    @property
    def window(self) -> int:
        """Items the detector looked back over when it last fired."""
        return self._at_fire[1] if self._fired else detector_window(self.inner)


class NoDrift:
    """The null detector: drift detection switched off."""

    name = "off"

    def update(self, x: float) -> NoDrift:
        return self

    @property
    def drift_detected(self) -> bool:
        return False

    @property
    def statistic(self) -> float:
        return 0.0


@dataclass(frozen=True)
class DriftEvent:
    """One detected shift: which detector, on which signal, where and how strong."""

    detector: str
    signal: str
    statistic: float
    window: int
    position: int  # the index, in its emitter's stream, of the item at which it fired

    def as_row(self) -> dict:
        return asdict(self)


DETECTORS = ("adwin", "kswin", "page_hinkley", "ddm", "embedding_shift", "off")


def make_detector(
    kind: str,
    *,
    warmup: int = 100,
    cooldown: int = 1000,
    reference: int = 500,
    window: int = 100,
) -> DriftDetector:
    """A guarded detector by name (``off`` switches the signal off).

    >>> make_detector("adwin").name, make_detector("off").name
    ('adwin', 'off')
    """
    if kind == "off":
        return NoDrift()
    if kind == "embedding_shift":
        return Guarded(EmbeddingShift(reference, window), warmup=0, cooldown=cooldown)
    if kind not in _RIVER:
        raise ValueError(f"unknown drift detector {kind!r}; choose from {list(DETECTORS)}")
    return Guarded(RiverDetector(kind), warmup=warmup, cooldown=cooldown)


def detector_window(det: DriftDetector) -> int:
    """How many items a detector looks back over now (0 where it has no notion of it)."""
    if isinstance(det, Guarded):
        return det.window
    inner = det
    if isinstance(inner, EmbeddingShift):
        return inner.window
    width = getattr(getattr(inner, "_det", None), "width", None)
    return int(width) if width is not None else 0


class StreamMonitor:
    """Unsupervised drift on what every scored item gives, as a worker sees it.

    Three signals, each with its own detector (any can be ``off``): the
    prediction confidence, the label mix (the sentiment score
    ``p_positive - p_negative``, whose mean moves when the mix moves), and the
    frozen embedding against a reference window. The first two depend on the
    serving model, so :meth:`model_changed` restarts them; the embedding space
    never moves, so its reference stays.

    >>> mon = StreamMonitor(confidence="off", label_mix="off", embedding="off")
    >>> mon.update(np.array([[0.1, 0.8, 0.1]]), np.zeros((1, 4)))
    []
    """

    def __init__(
        self,
        confidence: str = "adwin",
        label_mix: str = "adwin",
        embedding: str = "embedding_shift",
        warmup: int = 200,
        cooldown: int = 1000,
        embedding_reference: int = 500,
        embedding_window: int = 100,
    ) -> None:
        self.confidence = confidence
        self.label_mix = label_mix
        self.embedding = embedding
        self.warmup = warmup
        self.cooldown = cooldown
        self.embedding_reference = embedding_reference
        self.embedding_window = embedding_window
        self.seen = 0
        self._model_detectors()
        self._embedding = make_detector(
            embedding,
            warmup=warmup,
            cooldown=cooldown,
            reference=embedding_reference,
            window=embedding_window,
        )

    def _model_detectors(self) -> None:
        self._confidence = make_detector(
            self.confidence, warmup=self.warmup, cooldown=self.cooldown
        )
        self._label_mix = make_detector(self.label_mix, warmup=self.warmup, cooldown=self.cooldown)

    def model_changed(self) -> None:
        """The serving model changed: its confidence and label mix start a new normal."""
        self._model_detectors()

    def update(self, probs: np.ndarray, vectors: np.ndarray) -> list[DriftEvent]:
        """Feed one batch (rows in stream order); returns the events that fired."""
        events = []
        for p, v in zip(probs, vectors, strict=True):
            signals = (
                ("confidence", self._confidence, float(p.max())),
                ("label_mix", self._label_mix, float(p[2] - p[0])),
                ("embedding", self._embedding, v),
            )
            for signal, det, x in signals:
                if det.name != "off" and det.update(x).drift_detected:
                    events.append(
                        DriftEvent(
                            det.name,
                            signal,
                            round(float(det.statistic), 6),
                            detector_window(det),
                            self.seen,
                        )
                    )
            self.seen += 1
        return events
