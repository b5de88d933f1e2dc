"""Evaluation of a trained run on a held-out split (or any folder with the same classes)."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core import atomic, paths
from deeplense_cli.core.device import prepare_cpu_threads, resolve_device
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.ranges import check_number
from deeplense_cli.data.imageset import load_image_set
from deeplense_cli.data.sources import resolve_source
from deeplense_cli.data.splits import load_splits
from deeplense_cli.evaluation import EVAL_BATCH_SIZE, SPLITS, tta_tag
from deeplense_cli.evaluation.inference import predict_logits
from deeplense_cli.evaluation.metrics import (
    axion_mass_bins,
    classification_metrics,
    mean_log_loss,
    roc_curves,
    softmax,
)
from deeplense_cli.evaluation.ood import capture_features, ood_metrics, run_detector
from deeplense_cli.evaluation.plots import (
    axion_mass_figure,
    confusion_figure,
    roc_figure,
    save_figure,
)
from deeplense_cli.evaluation.regression import evaluate_masses, write_mass_report
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.runs.task import is_regression
from deeplense_cli.tracking import add_artifacts

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from deeplense_cli.data.imageset import ImageSet
    from deeplense_cli.data.splits import Splits


@dataclass
class Evaluation:
    """What an evaluation found and drew.

    ``metrics`` is what ``deeplense evaluate --json`` prints (and ``metrics.json`` holds, with
    ``out_dir`` added); ``figures`` are the figures written beside it, by file stem:
    ``roc``, ``confusion_matrix`` and, when the images carry axion masses, ``axion_mass``.
    """

    metrics: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        """The folder holding ``metrics.json`` and the PNGs."""
        return Path(self.metrics["out_dir"])


def _select(
    run: RunDir,
    split: str,
    splits: Splits | None,
    data: str | os.PathLike[str] | None,
    dataset: str | None,
    data_root: str | None,
    skip_bad: bool = False,
) -> tuple[ImageSet, np.ndarray, str]:
    classes = run.classes
    if data is not None or dataset is not None:
        source = resolve_source(dataset=dataset, data=data, data_root=data_root)
        folder = source.test_dir if (dataset is not None and source.test_dir) else source.train_dir
        images = load_image_set(folder, skip_bad=skip_bad)
        if list(images.classes) != list(classes):
            raise DeepLenseError(
                f"{folder} has classes {images.classes} but the model was trained on {classes}; "
                "evaluate on data with the same classes"
            )
        return images, np.arange(len(images.labels)), str(folder)
    if splits is None:
        config = run.read_config()
        if skip_bad:
            config["data"] = {**config["data"], "skip_bad": True}
        splits = load_splits(config)
    if list(splits.classes) != list(classes):
        raise DeepLenseError(
            f"the run's data now has classes {splits.classes} but the model was trained on {classes}"
        )
    if split == "test":
        return splits.test, splits.test_idx, "test split"
    if split == "val":
        return splits.train, splits.val_idx, "validation split"
    if split == "train":
        return splits.train, splits.train_idx, "training split"
    raise DeepLenseError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def evaluate_run(
    run: RunDir,
    split: str = "test",
    data: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    checkpoint: str = "best",
    splits: Splits | None = None,
    device: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE,
    out_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    skip_bad: bool = False,
    track: bool = True,
    tta: str = "none",
) -> Evaluation:
    """Evaluate ``run``'s checkpoint; write metrics.json, roc.png, confusion_matrix.png
    (and axion_mass.png) into ``out_dir`` and return the metrics with those figures.

    ``skip_bad``: leave unreadable files of the evaluated data out (counted in the result's
    ``skipped_files`` and ``warnings``) instead of failing. ``track``: add the files to the
    run's tracker runs (``RUN/tracking.json``), if it has any; training logs its own.
    """
    check_number("--batch-size", batch_size, 1, integer=True)
    images, idx, what = _select(run, split, splits, data, dataset, data_root, skip_bad)
    if len(idx) == 0:
        raise DeepLenseError(f"the {what} is empty; nothing to evaluate")
    dev = resolve_device(device)
    if dev.type == "cpu":
        prepare_cpu_threads()
    model = run.build_model(checkpoint).to(dev)
    if is_regression(run.task):  # --task axion-mass: errors in dex, no detector
        metrics, truth, pred = evaluate_masses(
            run, model, images, idx, what, dev, batch_size, progress, tta
        )
    else:
        metrics, logits = _score_classifier(
            run, model, images, idx, checkpoint, dev, batch_size, progress, skip_bad, tta
        )
    external = data is not None or dataset is not None
    metrics.update(
        {
            "split": "external" if external else split,
            "source": what,
            "checkpoint": checkpoint,
            "checkpoint_epoch": run.load_checkpoint(checkpoint).get("epoch"),
            "model": run.read_config()["model"]["name"],
            "run_dir": str(run.path),
            "tta": tta,
        }
    )
    if out_dir is None:
        tag = tta_tag(tta)  # a --tta evaluation keeps the plain one
        if external:
            # one folder per evaluated data folder: a later --data must not replace this one
            out_dir = run.path / paths.tagged(f"evaluation-{Path(what).name}{tag}", what)
        elif split == "test":
            out_dir = run.evaluation_dir.with_name(run.evaluation_dir.name + tag)
        else:
            out_dir = run.path / f"evaluation-{split}{tag}"
    if is_regression(run.task):
        title = f"{metrics['model']} on {what} (n={metrics['n']})"
        figures = write_mass_report(metrics, truth, pred, out_dir, title)
    else:
        figures = write_report(metrics, logits, images, idx, out_dir, what)
    metrics["out_dir"] = str(out_dir)
    if track:
        written = [out_dir / "metrics.json", *(out_dir / f"{name}.png" for name in figures)]
        add_artifacts(run.path, written)
    return Evaluation(metrics, figures)


def _score_classifier(
    run: RunDir,
    model: Any,
    images: ImageSet,
    idx: np.ndarray,
    checkpoint: str,
    dev: Any,
    batch_size: int,
    progress: Callable[[int], None] | None,
    skip_bad: bool,
    tta: str,
) -> tuple[dict[str, Any], np.ndarray]:
    """A classifier's metrics on ``images[idx]`` (with its out-of-distribution flag when the
    run has a detector) and its logits."""
    classes, transform = run.classes, run.transform
    detector, _ = run_detector(run, model, checkpoint, dev, batch_size)
    with ExitStack() as stack:
        features = stack.enter_context(capture_features(model, len(classes))) if detector else []
        logits = predict_logits(
            model,
            images.images,
            transform,
            indices=idx,
            batch_size=batch_size,
            device=dev,
            progress=progress,
        )
    check_finite(
        logits,
        f"the {checkpoint} checkpoint of {run.path}",
        "its weights are broken (did the run diverge?); evaluate another checkpoint or retrain "
        "with a lower --lr",
    )
    if tta == "rot180":  # the half turns, outside the detector's hooks
        turned = predict_logits(
            model, images.images, transform, idx, batch_size, dev, half_turn=True
        )
        logits = (logits + turned) / 2
    metrics = score(logits, images, idx, classes, skip_bad)
    if detector is not None:
        scores = detector.scores(np.concatenate(features))
        labels = np.asarray(images.labels)[idx]
        metrics["ood"] = ood_metrics(scores, detector.threshold, logits.argmax(1), labels)
    return metrics, logits


def check_finite(logits: np.ndarray, what: str, hint: str) -> None:
    """Refuse NaN or inf outputs in one line (they would fail inside sklearn's AUC)."""
    bad = int((~np.isfinite(logits).all(axis=1)).sum())
    if bad:
        raise DeepLenseError(
            f"{what} gives non-finite outputs (NaN or inf) on {bad} of {len(logits)} images: {hint}"
        )


def score(
    logits: np.ndarray, images: ImageSet, idx: np.ndarray, classes: list[str], skip_bad: bool
) -> dict[str, Any]:
    """The metrics of ``logits`` on ``images[idx]``: the same for a run and an ONNX file."""
    labels = np.asarray(images.labels)[idx]
    probs = softmax(logits.astype(np.float64))
    metrics = classification_metrics(labels, probs, classes, loss=mean_log_loss(probs, labels))
    if skip_bad:
        metrics["skipped_files"] = len(images.skipped)
        metrics["warnings"] = list(images.warnings)
    by_mass = axion_mass_bins(labels, probs.argmax(axis=1), images.axion_mass[idx], classes)
    if by_mass:
        metrics["axion_mass_bins"] = by_mass
    return metrics


def report_figures(
    metrics: dict[str, Any], logits: np.ndarray, images: ImageSet, idx: np.ndarray, what: str
) -> dict[str, Figure]:
    """The figures of an evaluation by file stem: ``roc``, ``confusion_matrix`` and, when
    the images carry axion masses, ``axion_mass`` (recall by mass)."""
    classes = list(metrics["classes"])
    labels = np.asarray(images.labels)[idx]
    probs = softmax(logits.astype(np.float64))
    curves = roc_curves(labels, probs, classes)
    aucs = {**metrics["auc"], "micro": metrics["micro_auc"], "macro": metrics["macro_auc"]}
    title = f"{metrics['model']} on {what} (n={len(labels)})"
    figures = {
        "roc": roc_figure(curves, aucs, title),
        "confusion_matrix": confusion_figure(np.array(metrics["confusion_matrix"]), classes, title),
    }
    by_mass = metrics.get("axion_mass_bins")
    if by_mass:
        n_mass = sum(b["n"] for b in by_mass)
        figures["axion_mass"] = axion_mass_figure(
            by_mass, f"{metrics['model']} on {what}: {n_mass} axion images"
        )
    return figures


def write_report(
    metrics: dict[str, Any],
    logits: np.ndarray,
    images: ImageSet,
    idx: np.ndarray,
    out_dir: Path,
    what: str,
) -> dict[str, Figure]:
    """Write metrics.json and the figures (ROC, confusion matrix, axion recall by mass) as
    PNGs named by their stems; returns the figures."""
    figures = report_figures(metrics, logits, images, idx, what)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        save_figure(fig, out_dir / f"{name}.png")
    mass_plot = out_dir / "axion_mass.png"
    if "axion_mass" not in figures and mass_plot.exists():
        mass_plot.unlink()  # from an earlier evaluation on data that carried masses
    atomic.write_json(out_dir / "metrics.json", metrics)
    return figures
