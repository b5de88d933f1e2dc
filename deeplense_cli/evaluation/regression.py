"""Evaluation of an axion-mass regressor (``train --task axion-mass``): errors in dex of
log10(m / eV), R^2, the error per mass bin (the bins of the classifier's recall table), and
two figures: predicted against true, and the residuals' histogram."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core import atomic
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.targets import log10_mass, with_mass
from deeplense_cli.evaluation.inference import predict_logits
from deeplense_cli.evaluation.plots import _new_figure, save_figure

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from deeplense_cli.data.imageset import ImageSet
    from deeplense_cli.runs.rundir import RunDir

FIGURES = ("mass_scatter", "mass_residuals")


def regression_metrics(
    truth: np.ndarray, pred: np.ndarray, baseline: float | None = None
) -> dict[str, Any]:
    """MAE, RMSE and bias (dex), R^2 and the median absolute error of ``pred`` against
    ``truth`` (both log10 eV); with ``baseline`` (the training mean) the MAE of predicting it."""
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    err = pred - truth
    n = len(truth)
    var = float(np.var(truth)) if n else 0.0
    out: dict[str, Any] = {
        "n": n,
        "mae": float(np.abs(err).mean()) if n else math.nan,
        "rmse": float(np.sqrt((err**2).mean())) if n else math.nan,
        "bias": float(err.mean()) if n else math.nan,
        "median_abs_error": float(np.median(np.abs(err))) if n else math.nan,
        "r2": float(1 - (err**2).mean() / var) if n and var > 0 else None,
    }
    if baseline is not None and n:
        out["mae_mean_predictor"] = float(np.abs(truth - baseline).mean())
    return out


def mass_bins(truth: np.ndarray, pred: np.ndarray, dex: float = 0.5) -> list[dict[str, Any]]:
    """MAE and bias per bin of true log10(m_a), on the fixed ``dex``-wide edges of
    :func:`deeplense_cli.evaluation.metrics.axion_mass_bins`, so the two tables line up."""
    truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    if not len(truth):
        return []
    lo = math.floor(truth.min() / dex) * dex
    hi = max(math.ceil(truth.max() / dex) * dex, lo + dex)
    edges = np.arange(lo, hi + dex / 2, dex)
    which = np.clip(np.searchsorted(edges, truth, side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        sel = which == b
        if not sel.any():
            continue
        err = pred[sel] - truth[sel]
        out.append(
            {
                "log10_mass_min": round(float(edges[b]), 6),
                "log10_mass_max": round(float(edges[b + 1]), 6),
                "n": int(sel.sum()),
                "mae": float(np.abs(err).mean()),
                "bias": float(err.mean()),
            }
        )
    return out


def score_masses(truth: np.ndarray, pred: np.ndarray, baseline: float | None) -> dict[str, Any]:
    """The metrics ``deeplense evaluate --json`` prints for a regressor."""
    metrics = regression_metrics(truth, pred, baseline)
    metrics["task"] = "axion-mass"
    metrics["unit"] = "dex of log10(m / eV)"
    metrics["mass_bins"] = mass_bins(truth, pred)
    return metrics


def scatter_figure(truth: np.ndarray, pred: np.ndarray, title: str) -> Figure:
    """Predicted against true log10(m_a), with the identity line."""
    fig = _new_figure((5, 5))
    ax = fig.subplots()
    ax.scatter(truth, pred, s=6, alpha=0.5)
    lo = float(min(np.min(truth), np.min(pred)))
    hi = float(max(np.max(truth), np.max(pred)))
    ax.plot([lo, hi], [lo, hi], "--", color="grey", lw=0.8)
    # at most ~6 ticks a side: labels such as -23.75 ran into each other at every 0.25
    from matplotlib.ticker import MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=5))
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("true log10 m_a (eV)")
    ax.set_ylabel("predicted log10 m_a (eV)")
    ax.set_title(title, fontsize=9)
    return fig


def residual_figure(truth: np.ndarray, pred: np.ndarray, title: str) -> Figure:
    """The histogram of the residuals (predicted - true) in dex."""
    fig = _new_figure((6, 4))
    ax = fig.subplots()
    ax.hist(np.asarray(pred) - np.asarray(truth), bins=40, color="tab:blue")
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("predicted - true log10 m_a (dex)")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    return fig


def write_mass_report(
    metrics: dict[str, Any], truth: np.ndarray, pred: np.ndarray, out_dir: Path, title: str
) -> dict[str, Figure]:
    """Write metrics.json, mass_scatter.png and mass_residuals.png; returns the figures."""
    figures = {
        "mass_scatter": scatter_figure(truth, pred, title),
        "mass_residuals": residual_figure(
            truth, pred, f"{title}: MAE {metrics['mae']:.4f} dex, RMSE {metrics['rmse']:.4f} dex"
        ),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        save_figure(fig, out_dir / f"{name}.png")
    atomic.write_json(out_dir / "metrics.json", metrics)
    return figures


def evaluate_masses(
    run: RunDir,
    model: torch.nn.Module,
    images: ImageSet,
    idx: np.ndarray,
    what: str,
    device: torch.device,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    tta: str = "none",
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """A regressor's metrics on the images of ``images[idx]`` that carry a mass, with the
    true and predicted log10 masses (eV)."""
    idx = with_mass(images, idx)
    if len(idx) == 0:
        raise DeepLenseError(
            f"the {what} has no images that carry an axion mass; an axion-mass model is "
            "evaluated on axion images (the DeepLense axion files hold [image, mass])"
        )
    scaling = run.target_scaling
    outputs = predict_logits(model, images.images, run.transform, idx, batch_size, device, progress)
    if tta == "rot180":
        turned = predict_logits(
            model, images.images, run.transform, idx, batch_size, device, half_turn=True
        )
        outputs = (outputs + turned) / 2
    if not np.isfinite(outputs).all():
        raise DeepLenseError(
            f"the model of {run.path} gives non-finite outputs (NaN or inf): its weights are "
            "broken (did the run diverge?); evaluate another checkpoint or retrain with a lower --lr"
        )
    truth = log10_mass(images, idx)
    pred = np.asarray(scaling.to_log10_mass(outputs[:, 0].astype(np.float64)))
    metrics = score_masses(truth, pred, baseline=scaling.mean_prediction)
    metrics["target"] = scaling.record()
    return metrics, truth, pred
