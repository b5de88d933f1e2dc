"""Evaluation figures: matplotlib ``Figure`` objects, and PNGs written atomically.

The figures are built without pyplot, so making them never changes the caller's matplotlib
backend (a notebook keeps its inline backend) and nothing needs closing: a figure is freed
with its last reference. ``deeplense evaluate`` writes them with :func:`save_figure`; the
Python API returns them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core import atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` as PNG atomically. The folder is the run's evaluation
    folder: what a killed evaluation left half-written there goes first."""
    atomic.sweep(path.parent)
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


def roc_figure(curves: dict[str, Any], aucs: dict[str, Any], title: str) -> Figure:
    """One-vs-rest ROC curves per class, with the micro and macro averages dashed."""
    fig = _new_figure((5.5, 5))
    ax = fig.subplots()
    for name, (fpr, tpr) in curves.items():
        auc = aucs.get(name)
        label = f"{name} (AUC {auc:.4f})" if isinstance(auc, float) else name
        style = "--" if name in ("micro", "macro") else "-"
        ax.plot(fpr, tpr, style, label=label)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def confusion_figure(cm: np.ndarray, classes: list[str], title: str) -> Figure:
    """The confusion matrix as counts and normalised by true class, side by side."""
    fig = _new_figure((10, 4.5))
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    axes = fig.subplots(1, 2)
    for ax, data, sub, fmt in (
        (axes[0], cm, "counts", "d"),
        (axes[1], norm, "normalised by true class", ".3f"),
    ):
        ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_xticks(range(len(classes)), classes, rotation=30)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sub)
        hi = data.max() if data.size else 0
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                ax.text(
                    j,
                    i,
                    format(data[i, j], fmt),
                    ha="center",
                    va="center",
                    color="white" if data[i, j] > hi / 2 else "black",
                    fontsize=9,
                )
    fig.suptitle(title)
    return fig


def axion_mass_figure(bins: list[dict[str, Any]], title: str) -> Figure:
    """Recall of the axion images per bin of log10(m_a), with each bin's count."""
    fig = _new_figure((6, 4))
    ax = fig.subplots()
    lo = np.array([b["log10_mass_min"] for b in bins])
    hi = np.array([b["log10_mass_max"] for b in bins])
    recall = np.array([b["recall"] for b in bins])
    ax.bar((lo + hi) / 2, recall, width=(hi - lo) * 0.9, color="tab:blue")
    for b, x, r in zip(bins, (lo + hi) / 2, recall, strict=True):
        short, long = b["vortex_half_length_arcsec"]
        ax.text(
            x,
            min(r + 0.02, 1.0),
            f'n={b["n"]}\nL {short:.2g}-{long:.2g}"',
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(sorted({*lo, *hi}))
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("log10 axion mass m_a (eV)  [L: vortex half-length]")
    ax.set_ylabel("recall (correctly classified)")
    ax.set_title(title, fontsize=9)
    return fig
