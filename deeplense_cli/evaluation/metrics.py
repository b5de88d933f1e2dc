"""Classification metrics computed the honest way: on softmax probabilities of the
evaluated model, one-vs-rest per class, with macro and micro averages."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deeplense_cli.data.physics import axion_vortex_half_length


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def mean_log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy of the true classes' probabilities (clipped: a zero is not infinite)."""
    picked = probs[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


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


def axion_mass_bins(
    labels: np.ndarray,
    pred: np.ndarray,
    axion_mass: np.ndarray,
    classes: list[str],
    dex: float = 0.5,
) -> list[dict[str, Any]]:
    """Recall of the images that carry an axion mass, per bin of log10(m_a).

    Axion images record the axion mass ``m_a`` (eV) that set their vortex's length
    (half-length 0.03e-22 / m_a arcsec), so a single accuracy figure hides where a model is
    blind: the bins show which masses it finds and what it takes the rest for. Bins are
    ``dex`` wide on fixed edges (multiples of ``dex`` in log10 eV), so runs compare bin for
    bin. Images without a mass (NaN) are left out; an empty list when none has one.
    """
    labels, pred = np.asarray(labels), np.asarray(pred)
    mass = np.asarray(axion_mass, dtype=np.float64)
    has = np.isfinite(mass) & (mass > 0)
    if not has.any():
        return []
    logm = np.log10(mass[has])
    lo = math.floor(logm.min() / dex) * dex
    hi = max(math.ceil(logm.max() / dex) * dex, lo + dex)
    edges = np.arange(lo, hi + dex / 2, dex)
    which = np.clip(np.searchsorted(edges, logm, side="right") - 1, 0, len(edges) - 2)
    truth, guess = labels[has], pred[has]
    out: list[dict[str, Any]] = []
    for b in range(len(edges) - 1):
        sel = which == b
        n = int(sel.sum())
        if n == 0:
            continue
        m_lo, m_hi = float(10 ** edges[b]), float(10 ** edges[b + 1])
        out.append(
            {
                "log10_mass_min": round(float(edges[b]), 6),
                "log10_mass_max": round(float(edges[b + 1]), 6),
                "vortex_half_length_arcsec": [
                    axion_vortex_half_length(m_hi),
                    axion_vortex_half_length(m_lo),
                ],
                "n": n,
                "recall": float((guess[sel] == truth[sel]).mean()),
                "predicted": {c: int((guess[sel] == i).sum()) for i, c in enumerate(classes)},
            }
        )
    return out
