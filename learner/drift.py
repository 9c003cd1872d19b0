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
from typing import Protocol, runtime_checkable

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


_RIVER = {
    "adwin": lambda: __import__("river.drift", fromlist=["ADWIN"]).ADWIN(delta=0.002),
    "kswin": lambda: __import__("river.drift", fromlist=["KSWIN"]).KSWIN(alpha=0.0001, seed=0),
    "page_hinkley": lambda: __import__("river.drift", fromlist=["PageHinkley"]).PageHinkley(
        threshold=20.0
    ),
    "ddm": lambda: __import__("river.drift.binary", fromlist=["DDM"]).DDM(),
}


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
        self._det = _RIVER[kind]()
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
        self._det = _RIVER[self.kind]()

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
        self.reference = reference
        self.window = window
        self.z = z
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._ref: list[np.ndarray] = []
        self._recent: deque[np.ndarray] = deque(maxlen=self.window)
        self._mean: np.ndarray | None = None
        self._null_mu = 0.0
        self._null_sd = 1.0
        self._stat = 0.0
        self._fired = False

    def _calibrate(self) -> None:
        ref = np.stack(self._ref)
        self._mean = ref.mean(axis=0)
        rng = np.random.default_rng(self.seed)
        draws = [
            float(
                np.linalg.norm(
                    ref[rng.choice(len(ref), self.window, replace=False)].mean(0) - self._mean
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
        self._recent.append(x)
        if len(self._recent) == self.window:
            dist = float(np.linalg.norm(np.mean(self._recent, axis=0) - self._mean))
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

    def update(self, x: float) -> Guarded:
        self._n += 1
        self.inner.update(x)
        self._fired = self._n > self._quiet_until and self.inner.drift_detected
        if self._fired:
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
        return self.inner.statistic


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
