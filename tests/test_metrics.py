"""Metrics from a confusion matrix, against direct counts from predictions."""

import numpy as np
import pytest

from trainer import metrics


def direct_metrics(labels, predictions, num_classes):
    """Reference: per-class precision/recall/F1 counted from the raw pairs."""
    f1s, recalls = [], []
    for c in range(num_classes):
        tp = np.sum((labels == c) & (predictions == c))
        fp = np.sum((labels != c) & (predictions == c))
        fn = np.sum((labels == c) & (predictions != c))
        recall = tp / (tp + fn) if tp + fn else 0.0
        precision = tp / (tp + fp) if tp + fp else 0.0
        recalls.append(recall)
        if tp + fp + fn:
            f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return np.mean(labels == predictions), np.mean(f1s), np.array(recalls)


@pytest.mark.parametrize("seed", range(5))
def test_from_confusion_matches_direct_counts(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=200)
    # Mostly right, some confusions; class 4 never predicted.
    predictions = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 4, size=200))
    confusion = np.zeros((5, 5), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    result = metrics.from_confusion(confusion)
    accuracy, macro_f1, recall = direct_metrics(labels, predictions, 5)
    assert result["accuracy"] == pytest.approx(accuracy)
    assert result["macro_f1"] == pytest.approx(macro_f1)
    np.testing.assert_allclose(result["recall"], recall)
    assert result["num_examples"] == 200


def test_macro_f1_is_not_accuracy_on_imbalanced_data():
    # 90 of class 0 all right, 10 of class 1 all predicted as 0.
    confusion = np.array([[90, 0], [10, 0]])
    result = metrics.from_confusion(confusion)
    assert result["accuracy"] == pytest.approx(0.9)
    assert result["macro_f1"] == pytest.approx((2 * 0.9 * 1.0 / 1.9) / 2)
    np.testing.assert_allclose(result["recall"], [1.0, 0.0])
