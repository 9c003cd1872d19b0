"""Classification quality: accuracy, macro-F1, confusion matrix, per-class scores, ECE."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from learner.data import LABELS, LabelledText

if TYPE_CHECKING:
    import numpy as np

    from learner.classifier import SentimentClassifier


def classification_metrics(
    y_true: list[str], y_pred: list[str], labels: Sequence[str] = LABELS
) -> dict:
    """Accuracy, macro-F1 (over ``labels``), confusion matrix (rows true, columns predicted).

    Computed with ``sklearn.metrics``. A class with no true and no predicted items
    scores 0 precision/recall/F1 (``zero_division=0``) and still counts in the macro
    average. Empty input gives zeros throughout.

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
    known = set(labels)
    unknown = sorted({y for y in (*y_true, *y_pred) if y not in known})
    if unknown:
        raise ValueError(f"labels {unknown} are not among {labels}")
    n = len(y_true)
    if n == 0:  # scikit-learn refuses empty input; nothing was right and nothing was wrong
        matrix = [[0] * len(labels) for _ in labels]
        precision = recall = f1 = [0.0] * len(labels)
        support = [0] * len(labels)
        accuracy = 0.0
    else:
        # Imported here: scikit-learn takes seconds to import, and only evaluation needs it.
        from sklearn.metrics import (
            accuracy_score,
            confusion_matrix,
            precision_recall_fscore_support,
        )

        matrix = confusion_matrix(y_true, y_pred, labels=labels).tolist()
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=None, zero_division=0
        )
        accuracy = float(accuracy_score(y_true, y_pred))
    # Plain floats and ints (not NumPy scalars), so the result is JSON-serialisable.
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": accuracy,
        # scikit-learn's macro average (f1_score(average="macro", labels=labels)): the
        # unweighted mean over every label, absent ones included at 0.
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(labels) if labels else 0.0,
        "confusion_matrix": matrix,
        "labels": labels,
        "n": n,
        "per_class": per_class,
    }


def evaluate(
    classifier: SentimentClassifier,
    data: list[LabelledText],
    batch_size: int = 64,
    *,
    predict_proba: Callable[[list[str]], np.ndarray] | None = None,
    wrong: int = 0,
) -> dict:
    """``classification_metrics`` of the classifier's predictions on ``data``, with ECE.

    ``predict_proba(texts)`` (columns in ``classifier.labels`` order) scores instead
    of the classifier's own PyTorch forward: e.g. the serving engine
    (:mod:`learner.runtime`), so that what is measured is what serves.

    ``ece`` is the top-label expected calibration error (``learner.calibration``).
    ``wrong`` > 0 adds ``confidently_wrong``: that many wrong predictions, the most
    confident first, each with its text, true label, predicted label and confidence.
    """
    import numpy as np

    from learner.calibration import ECE_BINS, expected_calibration_error

    texts = [item.text for item in data]
    probs = (
        predict_proba(texts)
        if predict_proba is not None
        else classifier.predict_proba(texts, batch_size=batch_size)
    )
    labels = list(classifier.labels)
    predicted = [labels[i] for i in probs.argmax(axis=1)]
    truth = [item.label for item in data]
    metrics = classification_metrics(truth, predicted, labels=labels)
    y = np.asarray([labels.index(t) for t in truth], dtype=int)
    metrics["ece"] = expected_calibration_error(probs, y)
    metrics["ece_bins"] = ECE_BINS
    if wrong > 0:
        confidence = probs.max(axis=1) if len(data) else np.zeros(0)
        misses = [i for i in np.argsort(-confidence, kind="stable") if predicted[i] != truth[i]]
        metrics["confidently_wrong"] = [
            {
                "text": texts[i],
                "label": truth[i],
                "predicted": predicted[i],
                "confidence": float(confidence[i]),
            }
            for i in misses[:wrong]
        ]
    return metrics
