"""Classification metrics from a confusion matrix.

The eval step only accumulates a confusion matrix (cheap, fixed-shape, summed
across replicas and workers); every reported number is derived from it here.
"""

from __future__ import annotations

import numpy as np


def from_confusion(confusion: np.ndarray) -> dict[str, float | np.ndarray]:
    """Accuracy, macro F1 and per-class recall; rows are labels, columns predictions.

    Classes absent from both labels and predictions are left out of the macro
    average rather than counted as F1 = 0, as scikit-learn does with
    `labels` restricted to the classes present.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    true_positives = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, true_positives / support, 0.0)
        precision = np.where(predicted > 0, true_positives / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support + predicted) > 0
    return {
        "accuracy": float(true_positives.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "recall": recall,
        "num_examples": int(total),
    }
