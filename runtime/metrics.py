"""Metrics of predictions against reference labels, in numpy: what a `--csv` run with a label column
reports per subject and over all subjects."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray, value: int) -> float:
    """Dice of one label value; 1.0 when the value is absent from both (nothing to find, nothing found)."""
    p = prediction == value
    r = reference == value
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def accuracy(predicted: Sequence[int], truth: Sequence[int]) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(truth)))


def balanced_accuracy(predicted: Sequence[int], truth: Sequence[int]) -> float:
    """Mean recall over the classes present in the truth."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    recalls = [float(np.mean(predicted[truth == c] == c)) for c in np.unique(truth)]
    return float(np.mean(recalls))


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    unique, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auc(probabilities: np.ndarray, truth: Sequence[int], values: Sequence[int]) -> float:
    """ROC AUC: binary on the positive class, macro one-vs-rest for more classes; NaN if undefined."""
    probabilities, truth = np.asarray(probabilities, dtype=np.float64), np.asarray(truth)
    if len(values) == 2:
        return _binary_auc(probabilities[:, 1], truth == values[1])
    per_class = [_binary_auc(probabilities[:, i], truth == v) for i, v in enumerate(values)]
    defined = [a for a in per_class if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


def regression(predicted: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    error = p - t
    r = float(np.corrcoef(p, t)[0, 1]) if len(p) > 1 and p.std() > 0 and t.std() > 0 else float("nan")
    return {"mae": float(np.abs(error).mean()), "mse": float((error ** 2).mean()),
            "rmse": float(np.sqrt((error ** 2).mean())), "pearson_r": r}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std())
