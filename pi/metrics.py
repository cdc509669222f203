"""Classification metrics without scikit-learn (it is not on the Pi): confusion, accuracy, macro-F1."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

Labels = Union[Sequence[int], np.ndarray]  # class indices, as a list or an integer array


def confusion(y_true: Labels, y_pred: Labels, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predictions."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return m


def report(y_true: Labels, y_pred: Labels, classes: Sequence[str]) -> dict:
    """accuracy, macro_f1, per-class precision/recall/f1/support and the confusion matrix."""
    m = confusion(y_true, y_pred, len(classes))
    tp = np.diag(m).astype(float)
    predicted, actual = m.sum(axis=0), m.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=(precision + recall) > 0)
    present = actual > 0
    return {
        "n": int(m.sum()),
        "accuracy": float(tp.sum() / max(1, m.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {c: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                          "f1": round(float(f1[i]), 4), "support": int(actual[i])}
                      for i, c in enumerate(classes)},
        "classes": list(classes),
        "confusion": m.tolist(),
    }
