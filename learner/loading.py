"""The one way a registry version is loaded to serve or to train from: proven first.

:func:`load_version` verifies the version's checksums against its card, loads
it (safetensors only), and runs a smoke batch of fixed texts that must give
finite probabilities whose rows sum to 1. A version that fails any step is
refused with a one-line reason (:class:`~state.registry.VersionIntegrityError`
or :class:`~learner.errors.ModelLoadError`) and never serves.

>>> import tempfile
>>> from state.registry import Registry
>>> registry = Registry(tempfile.mkdtemp())
>>> empty = registry.write_version(lambda d: None, {"kind": "example"})
>>> load_version(registry, empty)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
learner.errors.ModelLoadError: version v1 refused: ... has no config.json: ...
"""

from __future__ import annotations

import numpy as np

from learner.classifier import SentimentClassifier
from learner.errors import ModelLoadError
from state.registry import Registry

# A few fixed texts of the kinds the stream carries; what they score does not matter,
# only that every row is a probability distribution.
SMOKE_TEXTS = (
    "ACME shares jump after record quarterly profit",
    "Globex misses estimates and cuts its full-year outlook",
    "Initech to report second-quarter results on Monday",
    "$HOOLI",
)
_SUM_TOLERANCE = 1e-3


def smoke_check(classifier: SentimentClassifier, version: str) -> None:
    """Refuse a classifier whose outputs on :data:`SMOKE_TEXTS` are not probabilities."""
    probs = classifier.predict_proba(list(SMOKE_TEXTS))
    if probs.shape != (len(SMOKE_TEXTS), len(classifier.labels)):
        raise ModelLoadError(f"version {version} refused: the smoke batch gave shape {probs.shape}")
    if not np.isfinite(probs).all():
        raise ModelLoadError(
            f"version {version} refused: the smoke batch gave non-finite probabilities "
            "(NaN or infinite weights?)"
        )
    worst = float(np.abs(probs.sum(axis=1) - 1.0).max())
    if worst > _SUM_TOLERANCE:
        raise ModelLoadError(
            f"version {version} refused: smoke-batch probabilities do not sum to 1 "
            f"(off by {worst:.3g})"
        )


def load_version(
    registry: Registry, version: str, *, device: str = "auto", max_length: int = 128
) -> SentimentClassifier:
    """Verify, load and smoke-test ``version`` of ``registry`` on ``device``."""
    path = registry.verify(version)
    try:
        classifier = SentimentClassifier.from_pretrained(path, device=device, max_length=max_length)
    except ModelLoadError as exc:
        raise ModelLoadError(f"version {version} refused: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever the loaders raise, it is one reason
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(
            f"version {version} refused: it does not load ({type(exc).__name__}: {reason})"
        ) from exc
    smoke_check(classifier, version)
    return classifier
