"""Classification metrics agree with scikit-learn and handle edge cases."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from learner.data import LABELS
from learner.metrics import classification_metrics


def test_matches_scikit_learn_on_random_labels() -> None:
    rng = random.Random(7)
    y_true = [rng.choice(LABELS) for _ in range(500)]
    y_pred = [t if rng.random() < 0.6 else rng.choice(LABELS) for t in y_true]
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=list(LABELS)).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(LABELS), zero_division=0
    )
    for i, label in enumerate(LABELS):
        scores = m["per_class"][label]
        assert scores["precision"] == pytest.approx(precision[i])
        assert scores["recall"] == pytest.approx(recall[i])
        assert scores["f1"] == pytest.approx(f1[i])
        assert scores["support"] == support[i]
    assert m["labels"] == list(LABELS)
    assert m["n"] == 500


def test_absent_class_scores_zero_and_counts_in_macro() -> None:
    m = classification_metrics(["positive", "positive"], ["positive", "positive"])
    assert m["accuracy"] == 1.0
    assert m["per_class"]["negative"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx(1 / 3)


def test_empty_and_invalid_inputs() -> None:
    m = classification_metrics([], [])
    assert m["n"] == 0
    assert m["accuracy"] == 0.0
    with pytest.raises(ValueError, match="2 items but y_pred has 1"):
        classification_metrics(["positive", "neutral"], ["positive"])
    with pytest.raises(ValueError, match="not among"):
        classification_metrics(["bullish"], ["positive"])


def test_metrics_are_json_serialisable() -> None:
    import json

    m = classification_metrics(["negative", "neutral"], ["neutral", "neutral"])
    assert json.loads(json.dumps(m)) == m


def test_evaluate_lists_the_most_confidently_wrong_and_the_ece() -> None:
    import types

    import numpy as np

    from learner.data import LABELS, LabelledText
    from learner.metrics import evaluate

    clf = types.SimpleNamespace(labels=LABELS)
    data = [LabelledText(f"t{i}", lab) for i, lab in enumerate([LABELS[0]] * 4)]
    # Rows: right at 0.9, wrong at 0.8, wrong at 0.95, wrong at 0.5 (predicting LABELS[1]).
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.025, 0.95, 0.025], [0.3, 0.5, 0.2]])
    m = evaluate(clf, data, predict_proba=lambda texts: probs[: len(texts)], wrong=2)
    assert [w["text"] for w in m["confidently_wrong"]] == ["t2", "t1"]
    assert m["confidently_wrong"][0] == {
        "text": "t2", "label": LABELS[0], "predicted": LABELS[1], "confidence": 0.95
    }  # fmt: skip
    # Bins (15): 0.9 right alone; 0.8, 0.95 and 0.5 wrong, each alone: the mean gap.
    assert m["ece"] == pytest.approx((0.1 + 0.8 + 0.95 + 0.5) / 4)
    assert "confidently_wrong" not in evaluate(clf, data, predict_proba=lambda t: probs)
