"""Calibrated confidence: expected calibration error and temperature scaling.

Drift detectors and alerts read the model's confidence, so a probability of 0.9
should be right about nine times in ten. Temperature scaling (Guo et al., 2017)
divides the logits by one scalar fitted on held-out data; it changes no label
(the arg-max is the same) and folds into the head's last linear layer, so every
engine that serves the version (PyTorch, the fused pass, the ONNX export) gives
the calibrated probabilities without knowing about it.

>>> import numpy as np
>>> probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1]])
>>> round(expected_calibration_error(probs, np.array([0, 1])), 3)
0.35
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from learner.classifier import SentimentClassifier

ECE_BINS = 15
_T_RANGE = (0.05, 20.0)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: confidence against accuracy in ``bins`` equal-width bins, weighted.

    ``probs`` is ``(n, k)``, ``y`` the true column of each row. 0 for empty input.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if len(y) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of 0 joins bin 0.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / len(y))


def _scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def scale_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)``: what the logits divided by T would have given."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return _scaled(probs, temperature)


def _nll(probs: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = _scaled(probs, temperature)[np.arange(len(y)), y]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the negative log-likelihood of ``y``.

    Probabilities work as well as logits: log-softmax differs from the logits by a
    per-row constant, which softmax ignores. 1.0 for empty input.
    """
    y = np.asarray(y)
    if len(y) == 0:
        return 1.0
    from scipy.optimize import minimize_scalar

    lo, hi = (math.log(t) for t in _T_RANGE)
    result = minimize_scalar(
        lambda log_t: _nll(probs, y, math.exp(log_t)), bounds=(lo, hi), method="bounded"
    )
    best = math.exp(float(result.x))
    # The bounded search can stop a hair away from T = 1 on calibrated data: keep 1 if
    # it is no worse, so a calibrated model's weights are left exactly as they are.
    return 1.0 if _nll(probs, y, 1.0) <= _nll(probs, y, best) else best


def fold_temperature(classifier: SentimentClassifier, temperature: float) -> None:
    """Divide the logits by ``temperature`` for good: scales the output layer in place."""
    classifier.fold_temperature(temperature)


def calibrate(
    classifier: SentimentClassifier, probs: np.ndarray, y: np.ndarray
) -> dict[str, float | int | str]:
    """Fit T on held-out ``probs``/``y``, fold it into ``classifier``; what the card records."""
    temperature = fit_temperature(probs, y)
    before = expected_calibration_error(probs, y)
    after = expected_calibration_error(_scaled(probs, temperature), y)
    classifier.fold_temperature(temperature)
    return {
        "method": "temperature scaling, folded into the output layer",
        "temperature": temperature,
        "ece_before": before,
        "ece_after": after,
        "nll_before": _nll(probs, y, 1.0),
        "nll_after": _nll(probs, y, temperature),
        "bins": ECE_BINS,
        "n": len(y),
    }
