"""Classification quality: accuracy, macro-F1, confusion matrix, per-class scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from learner.data import LABELS, LabelledText

if TYPE_CHECKING:
    from learner.classifier import SentimentClassifier


def classification_metrics(
    y_true: list[str], y_pred: list[str], labels: Sequence[str] = LABELS
) -> dict:
    """Accuracy, macro-F1 (over ``labels``), confusion matrix (rows true, columns predicted).

    A class with no true and no predicted items scores 0 precision/recall/F1
    and still counts in the macro average, as in scikit-learn.

    >>> m = classification_metrics(["positive", "negative", "neutral", "neutral"],
    ...                            ["positive", "neutral", "neutral", "neutral"])
    >>> m["accuracy"], round(m["macro_f1"], 3), m["confusion_matrix"]
    (0.75, 0.6, [[0, 1, 0], [0, 2, 0], [0, 0, 1]])
    >>> m["per_class"]["neutral"]
    {'precision': 0.6666666666666666, 'recall': 1.0, 'f1': 0.8, 'support': 2}
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    labels = list(labels)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({y for y in (*y_true, *y_pred) if y not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among {labels}")
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[index[t]][index[p]] += 1
    n = len(y_true)
    per_class = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    correct = sum(matrix[i][i] for i in range(len(labels)))
    return {
        "accuracy": correct / n if n else 0.0,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(labels) if labels else 0.0,
        "confusion_matrix": matrix,
        "labels": labels,
        "n": n,
        "per_class": per_class,
    }


def evaluate(
    classifier: SentimentClassifier, data: list[LabelledText], batch_size: int = 64
) -> dict:
    """``classification_metrics`` of the classifier's predictions on ``data``."""
    probs = classifier.predict_proba([item.text for item in data], batch_size=batch_size)
    predicted = [classifier.labels[i] for i in probs.argmax(axis=1)]
    return classification_metrics(
        [item.label for item in data], predicted, labels=classifier.labels
    )
