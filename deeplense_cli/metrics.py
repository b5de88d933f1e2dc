"""Classification metrics computed the honest way: on softmax probabilities of the
evaluated model, one-vs-rest per class, with macro and micro averages."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of a binary problem; None when one side is empty (undefined)."""
    from sklearn.metrics import roc_auc_score

    if y_true.min() == y_true.max():
        return None
    return float(roc_auc_score(y_true, score))


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, classes: list[str], loss: float | None = None
) -> dict[str, Any]:
    """Accuracy, per-class OvR AUC, macro/micro AUC, confusion matrix, precision, recall."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if probs.ndim != 2 or probs.shape[1] != k or len(labels) != len(probs):
        raise ValueError(f"probs {probs.shape} do not match {len(labels)} labels, {k} classes")
    pred = probs.argmax(axis=1)
    onehot = np.eye(k, dtype=np.int64)[labels]
    per_class_auc = {c: _auc(onehot[:, i], probs[:, i]) for i, c in enumerate(classes)}
    defined = [v for v in per_class_auc.values() if v is not None]
    macro = float(np.mean(defined)) if defined else None
    micro = _auc(onehot.ravel(), probs.ravel())
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    precision, recall = {}, {}
    for i, c in enumerate(classes):
        predicted, actual = cm[:, i].sum(), cm[i, :].sum()
        precision[c] = float(cm[i, i] / predicted) if predicted else None
        recall[c] = float(cm[i, i] / actual) if actual else None
    out: dict[str, Any] = {
        "n": len(labels),
        "accuracy": float((pred == labels).mean()) if len(labels) else math.nan,
        "auc": per_class_auc,
        "macro_auc": macro,
        "micro_auc": micro,
        "confusion_matrix": cm.tolist(),
        "precision": precision,
        "recall": recall,
        "classes": list(classes),
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


def roc_curves(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """False/true positive rates per class plus micro and macro average curves."""
    from sklearn.metrics import roc_curve

    k = len(classes)
    onehot = np.eye(k, dtype=np.int64)[np.asarray(labels, dtype=np.int64)]
    curves: dict[str, Any] = {}
    for i, c in enumerate(classes):
        if onehot[:, i].min() != onehot[:, i].max():
            fpr, tpr, _ = roc_curve(onehot[:, i], probs[:, i])
            curves[c] = (fpr, tpr)
    if onehot.min() != onehot.max():
        curves["micro"] = roc_curve(onehot.ravel(), np.asarray(probs).ravel())[:2]
    if curves:
        grid = np.linspace(0, 1, 201)
        per = [np.interp(grid, *curves[c]) for c in classes if c in curves]
        if per:
            curves["macro"] = (grid, np.mean(per, axis=0))
    return curves
