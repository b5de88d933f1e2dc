"""Evaluate an ONNX model (an export or a shipped model) through ONNX Runtime.

Users evaluate the artifact they deploy: the same metrics, tables and figures as
``evaluate RUN`` (evaluation.evaluate's ``score`` and ``write_report``), without PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deeplense_cli.core import paths
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.ranges import check_number
from deeplense_cli.data.imageset import load_image_set
from deeplense_cli.data.sources import resolve_source
from deeplense_cli.data.targets import log10_mass, with_mass
from deeplense_cli.data.transforms import apply_transform
from deeplense_cli.deploy.onnx_session import OnnxModel
from deeplense_cli.evaluation import EVAL_BATCH_SIZE, tta_tag
from deeplense_cli.evaluation.evaluate import (
    Evaluation,
    check_finite,
    evaluate_run,
    score,
    write_report,
)
from deeplense_cli.evaluation.ood import ood_metrics
from deeplense_cli.evaluation.regression import score_masses, write_mass_report
from deeplense_cli.evaluation.tta import check_tta, with_tta
from deeplense_cli.registry.pretrained import resolve_model
from deeplense_cli.runs.rundir import RunDir


def evaluate_onnx(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    device: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE,
    threads: int | None = None,
    out_dir: Path | None = None,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    tta: str | None = None,
) -> Evaluation:
    """Evaluate ``model`` (a path or a shipped model's name) on ``data`` (any class-per-folder
    tree) or ``dataset`` (its test folder); write metrics.json and the figures to ``out_dir``
    (default ``RUN_ROOT/evaluations/<model>-<folder>-<digest of both paths>/``); return the
    metrics and figures."""
    if data is None and dataset is None:
        raise DeepLenseError(
            "an ONNX file carries no data of its own: pass --dataset Model_X (its test folder) "
            "or --data FOLDER"
        )
    check_number("--batch-size", batch_size, 1, integer=True)
    path = resolve_model(model)
    onnx = OnnxModel(path, device=device, threads=threads)
    tta = check_tta(tta if tta is not None else onnx.tta)
    source = resolve_source(dataset=dataset, data=data, data_root=data_root)
    folder = source.test_dir if (dataset is not None and source.test_dir) else source.train_dir
    images = load_image_set(folder, skip_bad=skip_bad)
    classes = onnx.classes
    if list(images.classes) != list(classes):
        raise DeepLenseError(
            f"{folder} has classes {images.classes} but {path.name} predicts {classes}; "
            "evaluate on data with the same classes"
        )
    idx = np.arange(len(images.labels))
    if len(idx) == 0:
        raise DeepLenseError(f"{folder} holds no images; nothing to evaluate")
    target = onnx.target  # an axion-mass model's scaling (None: a classifier)
    if target is not None:
        idx = with_mass(images, idx)
        if len(idx) == 0:
            raise DeepLenseError(
                f"{folder} holds no images that carry an axion mass; an axion-mass model is "
                "evaluated on axion images"
            )
    parts, scores = [], []
    for start in range(0, len(idx), batch_size):
        batch = idx[start : start + batch_size]
        x = apply_transform(np.asarray(images.images[batch]), onnx.transform)
        batch_logits, batch_scores = with_tta(onnx.outputs, x, tta)
        parts.append(batch_logits)
        if batch_scores is not None:
            scores.append(batch_scores)
        if progress is not None:
            progress(len(batch))
    logits = np.concatenate(parts).astype(np.float64)
    check_finite(logits, str(path), "the exported weights are broken; re-export the run")
    if target is not None:  # errors in dex of log10(m / eV)
        truth = log10_mass(images, idx)
        pred = np.asarray(target.to_log10_mass(logits[:, 0]))
        metrics = score_masses(truth, pred, baseline=target.mean_prediction)
        metrics["target"] = target.record()
    else:
        metrics = score(logits, images, idx, classes, skip_bad)
    threshold = onnx.ood_threshold
    # the flag's accuracy split is a classifier's; a regressor is scored in dex (as evaluate RUN)
    if scores and threshold is not None and target is None:
        labels = np.asarray(images.labels)[idx]
        metrics["ood"] = ood_metrics(np.concatenate(scores), threshold, logits.argmax(1), labels)
    metrics.update(
        {
            "split": "external",
            "source": str(folder),
            "model": onnx.info.architecture,
            "onnx": str(path),
            "onnx_precision": onnx.info.precision,  # "precision" is the per-class metric
            "device": onnx.device,
            "tta": tta,
        }
    )
    if out_dir is None:
        # every default export is model.onnx: the name alone would let one run's results
        # replace another's
        name = f"{path.stem}-{Path(folder).name}{tta_tag(tta)}"
        out_dir = paths.run_root() / "evaluations" / paths.tagged(name, path, folder)
    if target is not None:
        title = f"{metrics['model']} on {folder} (n={metrics['n']})"
        figures = write_mass_report(metrics, truth, pred, out_dir, title)
    else:
        figures = write_report(metrics, logits, images, idx, out_dir, str(folder))
    metrics["out_dir"] = str(out_dir)
    return Evaluation(metrics, figures)


def evaluate_target(
    target: str | os.PathLike[str],
    *,
    split: str = "test",
    data: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE,
    skip_bad: bool = False,
    out_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    tta: str | None = None,
) -> Evaluation:
    """What `deeplense evaluate TARGET` evaluates: a run directory with PyTorch (its ``split``
    or ``data``/``dataset``), anything else (an .onnx file, a shipped model's name) with ONNX
    Runtime; the command and the Python API both come through here."""
    check_number("--batch-size", batch_size, 1, integer=True)
    if Path(target).is_dir():
        return evaluate_run(
            RunDir.open(target),
            split=split,
            data=data,
            dataset=dataset,
            data_root=data_root,
            checkpoint=checkpoint,
            device=device,
            batch_size=batch_size,
            skip_bad=skip_bad,
            out_dir=out_dir,
            progress=progress,
            tta=check_tta(tta),
        )
    return evaluate_onnx(
        target,
        data=data,
        dataset=dataset,
        data_root=data_root,
        device=device,
        batch_size=batch_size,
        skip_bad=skip_bad,
        out_dir=out_dir,
        progress=progress,
        tta=tta,
    )
