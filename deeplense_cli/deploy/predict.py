"""Predict classes for image files with an exported model (ONNX Runtime) or a run (PyTorch).

Files are read in batches by a background thread while the previous batch runs, so a
folder of any size streams through in constant memory. Predicting with an ``.onnx`` file
never imports torch.

Size rules: an image whose size or channel count differs from the model's is an error,
unless ``resize=True``: then it is resized to the model's size by bilinear interpolation
(half-pixel centres, as PIL and ``torch.nn.functional.interpolate(align_corners=False)``;
no anti-aliasing; a non-square image is stretched), and a one-channel image is repeated
over the model's channels. The run's normalisation is applied after resizing.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from deeplense_cli.core import atomic
from deeplense_cli.core.cpu import cpu_flags
from deeplense_cli.core.device import exact_float32, prepare_cpu_threads, resolve_device
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.readers import BadImageError, as_image, find_images, read_image
from deeplense_cli.data.transforms import apply_transform, source_size
from deeplense_cli.deploy.defaults import OUTPUT_FORMATS, PREDICT_BATCH_SIZE
from deeplense_cli.deploy.onnx_session import OnnxModel, int8_saturation_warning, shareable
from deeplense_cli.evaluation.metrics import softmax
from deeplense_cli.evaluation.ood import capture_features, run_detector
from deeplense_cli.evaluation.tta import check_tta, with_tta
from deeplense_cli.registry.pretrained import resolve_model, shipped_models
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.runs.task import is_regression

if TYPE_CHECKING:
    import torch


class Predictor(Protocol):
    """What ``predict`` needs from a model: its classes, transform and batched logits."""

    @property
    def classes(self) -> list[str]: ...

    @property
    def transform(self) -> dict[str, Any]: ...

    @property
    def device(self) -> str: ...

    @property
    def ood_threshold(self) -> float | None: ...

    def logits(self, batch: np.ndarray) -> np.ndarray: ...

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...

    def describe(self) -> str: ...


class TorchPredictor:
    """A run directory's checkpoint on PyTorch (CPU or CUDA)."""

    def __init__(
        self, run_path: str | os.PathLike[str], device: str = "auto", checkpoint: str = "best"
    ) -> None:

        if device == "tensorrt":
            raise DeepLenseError(
                "--device tensorrt needs an exported model: run `deeplense export onnx RUN` "
                "and predict with RUN/model.onnx"
            )
        run = RunDir.open(run_path)
        self.run_path = run.path
        self.classes = run.classes
        self.transform = run.transform
        self.dev = resolve_device(device)
        if self.dev.type == "cpu":
            prepare_cpu_threads()
        self.device = self.dev.type
        self.model: torch.nn.Module = run.build_model(checkpoint).to(self.dev)
        self.architecture = str(run.read_config()["model"]["name"])
        # an axion-mass regressor's target scaling (None: a classifier)
        self.target = run.target_scaling if is_regression(run.task) else None
        self.num_outputs = 1 if self.target is not None else len(self.classes)
        # fitted on the run's own data the first time, then kept in the run
        self.detector, self.ood_unavailable = run_detector(run, self.model, checkpoint, self.dev)
        self.ood = self.detector.summary() if self.detector is not None else None

    @property
    def ood_threshold(self) -> float | None:
        return self.detector.threshold if self.detector is not None else None

    def describe(self) -> str:
        return f"{self.architecture} (PyTorch on {self.dev})"

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.dev)
        if self.detector is None:
            with torch.inference_mode(), exact_float32(self.dev):
                out = self.model(x)
            return np.asarray(out.float().cpu().numpy()), None
        with (
            capture_features(self.model, self.num_outputs) as feats,
            torch.inference_mode(),
            exact_float32(self.dev),
        ):
            out = self.model(x)
        scores = self.detector.scores(np.concatenate(feats))
        return np.asarray(out.float().cpu().numpy()), scores


def load_predictor(
    model: str | os.PathLike[str],
    device: str = "auto",
    threads: int | None = None,
    checkpoint: str = "best",
    tta: str | None = None,
) -> Predictor:
    """An exported ``.onnx`` file (ONNX Runtime), a run directory (PyTorch) or the name of a
    model that ships with deeplense (``Model_III``). ``tta``: test-time augmentation
    (:mod:`deeplense_cli.evaluation.tta`); None takes the file's own (``export --tta``)."""
    path = Path(model)
    if tta is not None:
        check_tta(tta)
    if path.is_dir():
        found: Predictor = TorchPredictor(path, device=device, checkpoint=checkpoint)
    else:
        if not path.exists():
            if path.suffix or len(path.parts) > 1:
                raise DeepLenseError(f"{path}: no such model file or run directory")
            path = resolve_model(model)
        found = OnnxModel(path, device=device, threads=threads)
    chosen = check_tta(tta if tta is not None else getattr(found, "tta", "none"))
    return found if chosen == "none" else TTAPredictor(found, chosen)


class TTAPredictor:
    """A predictor whose logits are averaged over test-time augmentation; everything else
    (classes, transform, the out-of-distribution threshold) is the wrapped one's."""

    def __init__(self, inner: Predictor, tta: str) -> None:
        self.inner, self.tta = inner, tta

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def classes(self) -> list[str]:
        return self.inner.classes

    @property
    def transform(self) -> dict[str, Any]:
        return self.inner.transform

    @property
    def device(self) -> str:
        return self.inner.device

    @property
    def ood_threshold(self) -> float | None:
        return self.inner.ood_threshold

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return with_tta(self.inner.outputs, batch, self.tta)

    def describe(self) -> str:
        return f"{self.inner.describe()}, test-time augmentation {self.tta}"


# ---- images -------------------------------------------------------------------------
def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D image with half-pixel centres (no anti-aliasing)."""
    h, w = image.shape

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    if (h, w) == (height, width):
        return image.astype(np.float32, copy=False)
    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    img = image.astype(np.float32, copy=False)
    rows = img[y0] * (1 - fy)[:, None] + img[y1] * fy[:, None]
    return np.asarray(rows[:, x0] * (1 - fx) + rows[:, x1] * fx, dtype=np.float32)


def fit_image(
    image: np.ndarray, size: int, channels: int, resize: bool, path: str | os.PathLike[str] = ""
) -> np.ndarray:
    """A ``(H, W)`` image as the model's raw input ``(channels, size, size)``."""
    if image.shape != (size, size) or channels != 1:
        if not resize:
            raise BadImageError(  # a bad file like any other: --skip-bad skips it
                path,
                f"image is 1x{image.shape[0]}x{image.shape[1]} (channels x height x "
                f"width) but the model expects {channels}x{size}x{size}; pass --resize to "
                "resize it (bilinear) and repeat its channel",
            )
        image = resize_bilinear(image, size, size)
    return np.repeat(image[None], channels, axis=0) if channels != 1 else image[None]


# ---- predictions --------------------------------------------------------------------
def probabilities(predictor: Predictor, raw: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, classes)`` for raw images at the model's input size
    ``(N, C, S, S)``: the model's transform, its logits, a softmax."""
    logits = predictor.logits(apply_transform(raw, predictor.transform))
    return softmax(logits.astype(np.float64))


def predict_arrays(
    predictor: Predictor,
    images: np.ndarray,
    batch_size: int = PREDICT_BATCH_SIZE,
    resize: bool = False,
) -> np.ndarray:
    """Class probabilities ``(N, classes)`` for images in memory: one ``(H, W)`` image or a
    batch ``(N, H, W)`` or ``(N, 1, H, W)``. Each image is checked as a file's would be
    (NaN/Inf pixels, size; named ``image I`` in errors) and sized by the module's rules."""
    return predict_arrays_scored(predictor, images, batch_size, resize)[0]


def _array_batches(
    predictor: Predictor, images: np.ndarray, batch_size: int, resize: bool
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """The model's outputs, batch by batch, for images in memory: one ``(H, W)`` image or a
    batch ``(N, H, W)`` or ``(N, 1, H, W)``, each checked as a file's would be (NaN/Inf
    pixels, size; named ``image I`` in errors) and sized by the module's rules."""
    if batch_size < 1:
        raise DeepLenseError("--batch-size must be at least 1")
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise DeepLenseError(
            f"images of shape {tuple(arr.shape)}: expected one image (H, W) or a batch "
            "(N, H, W) or (N, 1, H, W)"
        )
    transform = predictor.transform
    size, channels = source_size(transform), int(transform.get("in_channels", 1))
    for start in range(0, len(arr), batch_size):
        raw = [
            fit_image(as_image(image, f"image {i}"), size, channels, resize, f"image {i}")
            for i, image in enumerate(arr[start : start + batch_size], start)
        ]
        yield predictor.outputs(apply_transform(np.stack(raw), transform))


def predict_arrays_scored(
    predictor: Predictor,
    images: np.ndarray,
    batch_size: int = PREDICT_BATCH_SIZE,
    resize: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`predict_arrays` and the out-of-distribution scores ``(N,)`` (None when the model
    has no detector)."""
    parts = [np.zeros((0, len(predictor.classes)))]
    scores: list[np.ndarray] = []
    for logits, batch_scores in _array_batches(predictor, images, batch_size, resize):
        parts.append(softmax(logits.astype(np.float64)))
        if batch_scores is not None:
            scores.append(batch_scores)
    if predictor.ood_threshold is None:
        return np.concatenate(parts), None
    return np.concatenate(parts), (np.concatenate(scores) if scores else np.zeros(0))


def predict_log10_mass(
    predictor: Predictor,
    images: np.ndarray,
    batch_size: int = PREDICT_BATCH_SIZE,
    resize: bool = False,
) -> np.ndarray:
    """An axion-mass model's estimates, log10 of the mass in eV ``(N,)``, for images in
    memory (shaped and checked as :func:`predict_arrays` takes them)."""
    target = getattr(predictor, "target", None)
    if target is None:
        raise DeepLenseError("this model classifies; it has no axion-mass output")
    parts = [np.zeros(0)]
    for out, _ in _array_batches(predictor, images, batch_size, resize):
        parts.append(np.asarray(target.to_log10_mass(out[:, 0].astype(np.float64))))
    return np.concatenate(parts)


UNKNOWN = "unknown"  # the label of a flagged image under --reject-ood
# an axion-mass model takes every image for an axion and estimates its mass
REGRESSOR_LABEL = "axion"


@dataclass
class Prediction:
    path: str
    predicted: str
    probabilities: list[float]
    axion_mass: float | None = None
    # an axion-mass model's estimate, log10 of the mass in eV (None: a classifier)
    log10_axion_mass: float | None = None
    # the out-of-distribution flag (None: the model has no detector)
    in_distribution: bool | None = None
    ood_score: float | None = None


@dataclass
class Summary:
    model: str
    device: str
    classes: list[str]
    images: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    output: str | None = None
    ood: dict[str, Any] | None = None  # the detector (method, threshold, calibration)
    flagged: int = 0  # images outside the training distribution
    ood_unavailable: str = ""  # why there is no detector
    init_source: str = "RUN"  # what `train --init` would start from to fine-tune this model
    mass_model: str | None = None  # the axion-mass model after the classifier (--mass-model)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "classes": self.classes,
            "images": self.images,
            "counts": self.counts,
            "skipped": self.skipped,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
            "output": self.output,
            "ood": self.ood,
            "flagged": self.flagged if self.ood else None,
        } | ({"mass_model": self.mass_model} if self.mass_model else {})


def _read_batch(
    paths: list[Path], size: int, channels: int, resize: bool, skip_bad: bool
) -> tuple[np.ndarray, list[Path], list[float | None], list[str]]:
    images, kept, masses, skipped = [], [], [], []
    for p in paths:
        try:
            image, mass = read_image(p)
            images.append(fit_image(image, size, channels, resize, p))
        except BadImageError as exc:
            if not skip_bad:
                raise DeepLenseError(f"{exc}; pass --skip-bad to skip unreadable files") from None
            skipped.append(str(exc))
            continue
        kept.append(p)
        masses.append(mass)
    if not images:
        return np.zeros((0, channels, size, size), np.float32), kept, masses, skipped
    return np.stack(images), kept, masses, skipped


def iter_predictions(
    predictor: Predictor,
    files: list[Path],
    batch_size: int = PREDICT_BATCH_SIZE,
    resize: bool = False,
    skip_bad: bool = False,
    summary: Summary | None = None,
    progress: Callable[[int], None] | None = None,
    reject_ood: bool = False,
    mass: Predictor | None = None,
) -> Iterator[Prediction]:
    """Predictions for ``files`` in order, reading the next batch while one runs.
    ``reject_ood``: a flagged image is predicted ``unknown`` instead of a class. ``mass``: an
    axion-mass model that estimates the mass of each image the classifier calls an axion
    (:func:`check_mass_model`)."""
    if batch_size < 1:
        raise DeepLenseError("--batch-size must be at least 1")
    transform = predictor.transform
    # raw images are read at the size the transform takes (it may crop them after)
    size, channels = source_size(transform), int(transform.get("in_channels", 1))
    target = getattr(predictor, "target", None)  # an axion-mass model's scaling
    classes = predictor.classes if target is None else [REGRESSOR_LABEL]
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="deeplense-read") as pool:
        pending: Future[Any] | None = None
        if batches:
            pending = pool.submit(_read_batch, batches[0], size, channels, resize, skip_bad)
        for i in range(len(batches)):
            assert pending is not None
            raw, kept, masses, skipped = pending.result()
            pending = (
                pool.submit(_read_batch, batches[i + 1], size, channels, resize, skip_bad)
                if i + 1 < len(batches)
                else None
            )
            if summary is not None:
                summary.skipped.extend(skipped)
            if len(kept):
                batch: list[Prediction] = []
                logits, scores = predictor.outputs(apply_transform(raw, predictor.transform))
                probs = softmax(logits.astype(np.float64))
                top = probs.argmax(1)
                threshold = predictor.ood_threshold
                rows = enumerate(zip(kept, probs, top, masses, strict=True))
                for j, (path, p, k, carried) in rows:  # carried: the mass a file holds
                    pred = Prediction(str(path), classes[int(k)], [float(v) for v in p], carried)
                    if target is not None:  # the mass, no class probabilities
                        pred.probabilities = []
                        pred.log10_axion_mass = float(target.to_log10_mass(float(logits[j, 0])))
                    if scores is not None and threshold is not None:
                        pred.ood_score = float(scores[j])
                        pred.in_distribution = bool(scores[j] <= threshold)
                        if not pred.in_distribution:
                            if summary is not None:
                                summary.flagged += 1
                            if reject_ood:
                                pred.predicted = UNKNOWN
                    batch.append(pred)
                if mass is not None:
                    _add_masses(mass, raw, batch, summary, reject_ood)
                for pred in batch:
                    if summary is not None:
                        summary.images += 1
                        summary.counts[pred.predicted] = summary.counts.get(pred.predicted, 0) + 1
                    yield pred
            if progress is not None:
                progress(len(batches[i]))


def check_mass_model(classifier: Predictor, mass: Predictor, name: str = "") -> None:
    """``mass`` (given as ``name``) can follow ``classifier`` (``predict --mass-model``): a
    regressor after a classifier that knows axions, both reading the same images."""
    if getattr(classifier, "target", None) is not None:
        raise DeepLenseError(
            "--mass-model follows a classifier; MODEL is already an axion-mass model"
        )
    if getattr(mass, "target", None) is None:
        raise DeepLenseError(
            f"--mass-model {name or mass.describe()} classifies; give an axion-mass model (trained "
            "with --task axion-mass, or a shipped one: see `deeplense models pretrained`)"
        )
    if REGRESSOR_LABEL not in classifier.classes:
        raise DeepLenseError(
            f"--mass-model: MODEL has no {REGRESSOR_LABEL} class (it has "
            f"{', '.join(classifier.classes)}), so no image would get a mass"
        )
    shapes = [
        (source_size(m.transform), int(m.transform.get("in_channels", 1)))
        for m in (classifier, mass)
    ]
    if shapes[0] != shapes[1]:
        (a, ac), (b, bc) = shapes
        raise DeepLenseError(
            f"--mass-model reads {b}x{b} images with {bc} channel(s), MODEL {a}x{a} with "
            f"{ac}: use two models of the same dataset"
        )


def _add_masses(
    mass: Predictor,
    raw: np.ndarray,
    preds: list[Prediction],
    summary: Summary | None,
    reject_ood: bool,
) -> None:
    """The mass of each image of the batch called an axion. A row is in distribution only
    when both models' detectors say so: the mass model flagging one flags the row."""
    rows = [i for i, pred in enumerate(preds) if pred.predicted == REGRESSOR_LABEL]
    if not rows:
        return
    target = mass.target  # type: ignore[attr-defined]
    out, scores = mass.outputs(apply_transform(raw[rows], mass.transform))
    threshold = mass.ood_threshold
    for j, i in enumerate(rows):
        pred = preds[i]
        pred.log10_axion_mass = float(target.to_log10_mass(float(out[j, 0])))
        if scores is None or threshold is None or scores[j] <= threshold:
            continue
        if pred.in_distribution is not False and summary is not None:
            summary.flagged += 1
        pred.in_distribution = False
        if reject_ood:
            pred.predicted, pred.log10_axion_mass = UNKNOWN, None


def _init_source(predictor: Predictor) -> str:
    """The run or shipped model that fine-tuning would start from."""
    if isinstance(predictor, TTAPredictor):
        return _init_source(predictor.inner)
    if isinstance(predictor, TorchPredictor):
        return str(predictor.run_path)
    path = getattr(predictor, "path", None)
    for model in shipped_models().values():
        if path is not None and Path(path).resolve() == model.path.resolve():
            return model.name
    info = getattr(predictor, "info", None)
    return str(getattr(info, "source_run", "") or "RUN")


def _or(names: Iterable[str]) -> str:
    """``a, b or c``."""
    *rest, last = names
    return f"{', '.join(rest)} or {last}" if rest else last


def output_format(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise DeepLenseError(
            f"{path}: unknown output type {suffix or '(none)'}; use {_or(OUTPUT_FORMATS)}"
        )
    return OUTPUT_FORMATS[suffix]


def prediction_record(pred: Prediction, classes: list[str]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "path": pred.path,
        "predicted": pred.predicted,
        "probabilities": dict(zip(classes, pred.probabilities, strict=True)),
    }
    if not classes:  # an axion-mass model alone: no class probabilities
        del record["probabilities"]
    if pred.log10_axion_mass is not None:  # an axion-mass model's estimate
        record["log10_axion_mass"] = pred.log10_axion_mass
        record["axion_mass_ev"] = 10**pred.log10_axion_mass
    if pred.axion_mass is not None:
        record["axion_mass"] = pred.axion_mass
    if pred.in_distribution is not None:
        record["in_distribution"] = pred.in_distribution
        record["ood_score"] = pred.ood_score
    return record


def write_predictions(
    path: str | os.PathLike[str],
    classes: list[str],
    predictions: Iterable[Prediction],
    masses: bool = False,
) -> int:
    """Stream predictions to ``path`` (:data:`OUTPUT_FORMATS`), atomically; returns the count.

    CSV columns: ``path, predicted, p_<class>..., in_distribution, ood_score`` (the last two
    empty when the model has no detector); JSON Lines / JSON: one object per file with
    ``path``, ``predicted``, ``probabilities`` (and ``axion_mass`` when the file has one,
    ``in_distribution`` and ``ood_score`` when the model has a detector). ``masses``:
    ``log10_axion_mass`` and ``axion_mass_ev`` after the probabilities (an axion-mass model
    alone has none; after a classifier, ``--mass-model``, they are empty for the images it
    does not call axions).
    """
    fmt = output_format(path)
    n = 0
    atomic.sweep(Path(path).parent)  # what killed commands left half-written there
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        shareable(tmp)
        if fmt == "csv":
            writer = csv.writer(fh, lineterminator="\n")
            values = [f"p_{c}" for c in classes]
            values += ["log10_axion_mass", "axion_mass_ev"] if masses else []
            writer.writerow(["path", "predicted", *values, "in_distribution", "ood_score"])
            for pred in predictions:
                flag = "" if pred.in_distribution is None else str(pred.in_distribution).lower()
                score = "" if pred.ood_score is None else f"{pred.ood_score:.6g}"
                m = pred.log10_axion_mass
                mass = [f"{m:.6g}", f"{10**m:.6g}"] if m is not None else ["", ""]
                writer.writerow(
                    [
                        pred.path,
                        pred.predicted,
                        *[f"{p:.6g}" for p in pred.probabilities],
                        *(mass if masses else []),
                        flag,
                        score,
                    ]
                )
                n += 1
        elif fmt == "jsonl":
            for pred in predictions:
                fh.write(json.dumps(prediction_record(pred, classes)) + "\n")
                n += 1
        else:
            fh.write("[")
            for pred in predictions:
                fh.write(
                    ("\n  " if n == 0 else ",\n  ") + json.dumps(prediction_record(pred, classes))
                )
                n += 1
            fh.write("\n]\n" if n else "]\n")
    return n


def predict(
    model: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str] | None = None,
    device: str = "auto",
    batch_size: int = PREDICT_BATCH_SIZE,
    resize: bool = False,
    skip_bad: bool = False,
    threads: int | None = None,
    checkpoint: str = "best",
    on_start: Callable[[Summary, int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    on_prediction: Callable[[Prediction], None] | None = None,
    reject_ood: bool = False,
    tta: str | None = None,
    mass_model: str | os.PathLike[str] | None = None,
) -> Summary:
    """Predict every supported file among ``inputs``; write ``output`` if given.
    ``reject_ood``: images the model's detector flags are predicted ``unknown``.
    ``mass_model``: an axion-mass model (file, run or shipped name) that adds the mass of
    every image ``model`` calls an axion.

    ``on_start(summary, n_files)`` is called once the model is loaded; ``on_prediction``
    receives each prediction (e.g. to print it) as it is made.
    """
    if output is not None:
        output_format(output)  # fail before the model loads
    files = find_images(inputs)
    if not files:
        raise DeepLenseError("no image files found in the inputs (.npy, .npz, FITS, PNG, JPEG)")
    predictor = load_predictor(
        model, device=device, threads=threads, checkpoint=checkpoint, tta=tta
    )
    regressor = getattr(predictor, "target", None) is not None  # an axion-mass model
    classes = [] if regressor else list(predictor.classes)
    mass = None
    if mass_model is not None:
        mass = load_predictor(mass_model, device=device, threads=threads, checkpoint=checkpoint)
        check_mass_model(predictor, mass, os.fspath(mass_model))
    summary = Summary(
        mass_model=None if mass is None else mass.describe(),
        model=predictor.describe(),
        device=predictor.device,
        classes=classes,
        counts={c: 0 for c in classes or [REGRESSOR_LABEL]} | ({UNKNOWN: 0} if reject_ood else {}),
        output=str(output) if output is not None else None,
        ood=getattr(predictor, "ood", None),
        ood_unavailable=str(getattr(predictor, "ood_unavailable", "") or ""),
        init_source=_init_source(predictor),
    )
    if mass is not None and getattr(mass, "ood", None) is None:
        summary.warnings.append(
            "the mass model has no out-of-distribution detector: only MODEL's flags its images"
        )
    if summary.ood is None:
        why = summary.ood_unavailable or "it was exported without one; re-export it"
        summary.warnings.append(
            f"no out-of-distribution detector for this model ({why}): images unlike its "
            "training data are not flagged"
        )
        if reject_ood:
            raise DeepLenseError(
                f"--reject-ood needs a model with an out-of-distribution detector ({why})"
            )
    info = getattr(predictor, "info", None)
    if info is not None:
        warning = int8_saturation_warning(info, predictor.device, cpu_flags())
        summary.warnings += [warning] if warning else []
    if on_start is not None:
        on_start(summary, len(files))
    start = time.perf_counter()
    stream = iter_predictions(
        predictor, files, batch_size, resize, skip_bad, summary, progress, reject_ood, mass
    )
    if on_prediction is not None:
        callback = on_prediction

        def tapped(preds: Iterator[Prediction]) -> Iterator[Prediction]:
            for pred in preds:
                callback(pred)
                yield pred

        stream = tapped(stream)
    if output is not None:
        write_predictions(output, summary.classes, stream, masses=regressor or mass is not None)
    else:
        for _ in stream:
            pass
    summary.seconds = time.perf_counter() - start
    return summary
