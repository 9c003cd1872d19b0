"""Calibration: ECE, temperature fitting, and the temperature folded into a real model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from learner.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
    scale_probabilities,
)
from learner.classifier import SentimentClassifier


def _probs(rows: np.ndarray) -> np.ndarray:
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


logit_rows = arrays(
    np.float64,
    st.tuples(st.integers(1, 60), st.just(3)),
    elements=st.floats(-30, 30, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(logit_rows, st.data())
def test_ece_is_a_weighted_gap_between_zero_and_one(rows: np.ndarray, data: st.DataObject) -> None:
    probs = _probs(rows)
    y = np.asarray(data.draw(st.lists(st.integers(0, 2), min_size=len(rows), max_size=len(rows))))
    ece = expected_calibration_error(probs, y)
    assert 0.0 <= ece <= 1.0
    # One bin only: the gap between mean confidence and accuracy, exactly.
    one = expected_calibration_error(probs, y, bins=1)
    gap = abs((probs.argmax(1) == y).mean() - probs.max(1).mean())
    assert one == pytest.approx(gap, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(logit_rows, st.floats(0.1, 10))
def test_scaling_keeps_every_label_and_sums_to_one(rows: np.ndarray, t: float) -> None:
    probs = _probs(rows)
    scaled = scale_probabilities(probs, t)
    assert np.allclose(scaled.sum(axis=1), 1.0)
    # Where the top label is clear (not a floating-point tie), it stays the top label.
    top = np.sort(probs, axis=1)
    clear = (top[:, -1] - top[:, -2]) > 1e-6
    assert (scaled.argmax(1)[clear] == probs.argmax(1)[clear]).all()


def test_fitted_temperature_undoes_known_over_and_under_confidence() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    true_logits = rng.normal(0, 2.0, size=(n, 3))
    y = np.asarray([rng.choice(3, p=p) for p in _probs(true_logits)])
    calibrated = _probs(true_logits)
    assert fit_temperature(calibrated, y) == pytest.approx(1.0, abs=0.1)
    over = _probs(true_logits * 3.0)  # three times too sharp: T ≈ 3 undoes it
    under = _probs(true_logits / 2.0)
    assert fit_temperature(over, y) == pytest.approx(3.0, rel=0.15)
    assert fit_temperature(under, y) == pytest.approx(0.5, rel=0.15)
    t = fit_temperature(over, y)
    assert expected_calibration_error(scale_probabilities(over, t), y) < 0.5 * (
        expected_calibration_error(over, y)
    )


def test_bad_temperatures_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        scale_probabilities(np.ones((1, 3)) / 3, 0.0)
    with pytest.raises(ValueError, match="positive"):
        scale_probabilities(np.ones((1, 3)) / 3, float("nan"))


def test_temperature_folds_into_a_real_model() -> None:
    clf = SentimentClassifier.from_encoder(device="cpu", max_length=32, seed=0)
    texts = ["Acme beats estimates", "Globex cuts guidance", "Initech holds its meeting"]
    with_bias = clf.model.classifier
    import torch

    with torch.no_grad():  # a fresh head is nearly uniform: give it something to scale
        with_bias.weight.mul_(40.0)
        with_bias.bias.copy_(torch.tensor([0.5, -0.3, 0.1]))
    before = clf.predict_proba(texts)
    fold_temperature(clf, 2.5)
    after = clf.predict_proba(texts)
    assert np.allclose(after, scale_probabilities(before, 2.5), atol=1e-5)
    assert (after.argmax(1) == before.argmax(1)).all()
    assert not np.allclose(after, before, atol=1e-3)
    y = np.asarray([0, 1, 2])
    card = calibrate(clf, after, y)
    assert card["temperature"] > 0 and card["n"] == 3
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(card)
    assert card["nll_after"] <= card["nll_before"] + 1e-12
