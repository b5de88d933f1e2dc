"""The Python API: simulate, open, train, evaluate, export and predict from scripts and notebooks.

    >>> from deeplense_cli import api
    >>> "resnet18" in api.architectures()
    True

Each function runs the engine its ``deeplense`` command runs and writes the same files (data
folders, run directories, evaluations, exports). Nothing here prints, exits or needs click:
bad input raises :class:`DeepLenseError` with the command's one-line message (a full or
read-only disk included). Long calls take ``progress``: ``None`` (silent), ``"bar"`` (tqdm
bars; widgets in Jupyter when ipywidgets is installed) or a callback that receives event
dicts (``{"event": ..., ...}``; training's are the lines of ``deeplense train --output
jsonl``).

A typical session (``examples/notebooks/tour.ipynb`` runs it, with figures)::

    api.simulate("Model_III", "data", train_per_class=300, test_per_class=100)
    run = api.train("resnet18", dataset="Model_III", data_root="data", epochs=3, progress="bar")
    result = api.evaluate(run)              # result.metrics, result.figures["roc"]
    export = api.export_onnx(run)           # run/model.onnx, validated against PyTorch
    api.load_model(export.path).predict_files("examples/real_samples").predicted
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

import numpy as np

from deeplense_cli.core import paths
from deeplense_cli.core.atomic import destination_fault, fault_message
from deeplense_cli.core.cpu import cpu_flags
from deeplense_cli.core.device import configure_openmp
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data import EXAMPLES_PER_CLASS
from deeplense_cli.data.imageset import ImageSet, load_image_set
from deeplense_cli.data.readers import find_images
from deeplense_cli.data.sources import DATASET_SPLITS
from deeplense_cli.data.summary import dataset_folder, example_grid, summarize
from deeplense_cli.data.transforms import source_size
from deeplense_cli.deploy.defaults import (
    DEFAULT_OPSET,
    EXPORTERS,
    PREDICT_BATCH_SIZE,
    VALIDATION_IMAGES,
)
from deeplense_cli.deploy.evaluate_onnx import evaluate_target
from deeplense_cli.deploy.onnx_session import int8_saturation_warning
from deeplense_cli.deploy.precision import DEFAULT_PRECISION
from deeplense_cli.deploy.predict import (
    Predictor,
    Summary,
    iter_predictions,
    load_predictor,
    predict_arrays_scored,
    predict_log10_mass,
)
from deeplense_cli.evaluation import EVAL_BATCH_SIZE
from deeplense_cli.evaluation.evaluate import Evaluation
from deeplense_cli.registry.manager import architectures
from deeplense_cli.registry.pretrained import PretrainedModel, shipped_models
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.simulate import (
    TEST_PER_CLASS,
    TRAIN_PER_CLASS,
    check_request,
    model_spec,
    parse_classes,
    simulate_dataset,
)
from deeplense_cli.training.config import config_from_mapping, load_config_file, resolve
from deeplense_cli.training.reporters import (
    BarReporter,
    CallbackReporter,
    Reporter,
    SilentReporter,
    progress_bar,
)
from deeplense_cli.training.start import check_device, start_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from deeplense_cli.deploy.export import ExportResult

__all__ = [
    "Dataset",
    "DeepLenseError",
    "Evaluation",
    "Model",
    "Predictions",
    "Progress",
    "Run",
    "architectures",
    "evaluate",
    "export_onnx",
    "load_model",
    "open_dataset",
    "pretrained_models",
    "simulate",
    "train",
]

# As the command line does before torch loads: PyTorch's OpenMP threads spin briefly before
# they sleep (a no-op when torch is already imported or the user set the policy).
configure_openmp()

#: ``None`` (silent), ``"bar"`` (tqdm bars) or a callback receiving event dicts.
Progress = Literal["bar"] | Callable[[dict[str, Any]], None] | None
PathArg = str | os.PathLike[str]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _one_line(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn a destination fault (full disk, read-only, no permission) that the engine did not
    report itself into the one-line DeepLenseError the command line shows."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except DeepLenseError:
            raise
        except Exception as exc:
            fault = destination_fault(exc)
            if fault is None:
                raise
            raise DeepLenseError(fault_message(fault, None)) from None

    return wrapper


def _path(name: str, value: Any, optional: bool = False) -> str | None:
    """``value`` as a path string, or TypeError naming the argument (os.fspath's own error
    names none, and comes from deep inside)."""
    if value is None and optional:
        return None
    if isinstance(value, str | os.PathLike):
        return os.fspath(value)
    what = "a path (str or os.PathLike)" + (" or None" if optional else "")
    raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r:.60}")


def _name(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a name (str) or None, got {type(value).__name__}")


def _check_progress(progress: Progress) -> None:
    if (
        progress is None
        or progress == "bar"
        or (callable(progress) and not isinstance(progress, str))
    ):
        return
    raise DeepLenseError(f"progress must be None, 'bar' or a callable, got {progress!r}")


@contextlib.contextmanager
def _counter(
    progress: Progress, event: str, total: int | None, unit: str = "img"
) -> Iterator[Callable[[int], None] | None]:
    """An engine's ``progress(n)`` (n more done) for ``progress``: a bar, or events
    ``{"event": event, "done": ..., "total": ...}``."""
    _check_progress(progress)
    if progress is None:
        yield None
    elif isinstance(progress, str):
        bar = progress_bar(total=total, desc=event, unit=unit)
        try:
            yield bar.update
        finally:
            bar.close()
    else:
        callback = progress
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            callback({"event": event, "done": done, "total": total})

        yield advance


# ---- architectures and shipped models -------------------------------------------------
def pretrained_models() -> list[PretrainedModel]:
    """The trained models that ship with deeplense (``deeplense models pretrained``): each
    has a ``name`` (usable wherever a model file goes), its ``path`` and model ``card``.

        >>> shipped = {m.name: m for m in api.pretrained_models()}
        >>> "Model_III" in shipped, shipped["Model_III"].card["architecture"]
        (True, 'CvT')
    """
    return list(shipped_models().values())


# ---- data -----------------------------------------------------------------------------
@_one_line
def simulate(
    dataset: str,
    out: PathArg | None = None,
    *,
    train_per_class: int = TRAIN_PER_CLASS,
    test_per_class: int = TEST_PER_CLASS,
    seed: int = 0,
    workers: int | None = None,
    classes: str | Iterable[str] | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """Simulate a DeepLense dataset with lenstronomy (``deeplense data simulate``).

    Writes ``OUT/Model_X/{class}/*.npy`` and ``OUT/Model_X_test/...`` (``out``: default the
    data root), the released layout; a re-run resumes. ``workers`` processes (default all
    cores); ``classes`` a subset. Returns the summary (``train_dir``, ``test_dir``,
    ``written``, ``skipped``, ``seconds``...). Progress events: ``{"event": "simulate",
    "done": images, "total": images}``.

        >>> summary = api.simulate("Model_III", "data", train_per_class=20, test_per_class=10,
        ...                        seed=1, workers=1)  # doctest: +SKIP
        >>> summary["written"]  # doctest: +SKIP
        90
    """
    _name("dataset", dataset)
    _path("out", out, optional=True)
    spec = model_spec(dataset)
    selected = parse_classes(classes)
    n_workers = check_request(train_per_class, test_per_class, seed, workers)
    total = (train_per_class + test_per_class) * len(selected)
    with _counter(progress, "simulate", total) as advance:
        return simulate_dataset(
            spec.name,
            paths.data_root(out),
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            seed=seed,
            workers=n_workers,
            classes=selected,
            progress=advance,
        )


class Dataset:
    """The images of one class-per-folder tree, labelled by their folders
    (:func:`open_dataset`). ``images`` is memory-mapped from deeplense's cache."""

    def __init__(self, image_set: ImageSet) -> None:
        self.image_set = image_set

    @property
    def images(self) -> np.ndarray:
        """``(N, 1, H, W)`` float32, memory-mapped: index it to read only what you need."""
        return self.image_set.images

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` int64 indices into :attr:`classes`."""
        return self.image_set.labels

    @property
    def classes(self) -> list[str]:
        """The class names (folder names), in label order."""
        return list(self.image_set.classes)

    @property
    def axion_mass(self) -> np.ndarray:
        """``(N,)`` float64 axion mass in eV from the axion files, NaN where a file has none."""
        return self.image_set.axion_mass

    @property
    def paths(self) -> list[Path]:
        """Each image's file."""
        return [self.image_set.root / rel for rel in self.image_set.files]

    @property
    def root(self) -> Path:
        return self.image_set.root

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Bad files left out with ``skip_bad``: (file, why)."""
        return list(self.image_set.skipped)

    def __len__(self) -> int:
        return len(self.image_set)

    def counts(self) -> dict[str, int]:
        """Images per class."""
        return self.image_set.counts()

    def summary(self) -> dict[str, Any]:
        """What ``deeplense data info`` reports for this folder: counts, shape, value and
        axion-mass ranges, bad files."""
        return summarize(self.image_set)

    def show(self, per_class: int = EXAMPLES_PER_CLASS, seed: int = 0) -> Figure:
        """A grid of ``per_class`` examples per class, titled with the axion masses (the
        figure ``deeplense data show`` writes)."""
        return example_grid(self.image_set, per_class, seed)

    def __repr__(self) -> str:
        size = "x".join(str(n) for n in self.image_set.image_shape[1:])
        return (
            f"Dataset({str(self.root)!r}: {len(self)} images of {size} px, "
            f"classes {', '.join(self.classes)})"
        )


@_one_line
def open_dataset(
    path_or_name: PathArg,
    *,
    split: str = "train",
    data_root: PathArg | None = None,
    skip_bad: bool = False,
    progress: Progress = None,
) -> Dataset:
    """A dataset by name (``Model_III`` under the data root) or any class-per-folder folder;
    ``split="test"`` opens its test folder (``X_test`` beside it).

    The first open packs the files into deeplense's memory-mapped cache (as training does);
    bad files are an error unless ``skip_bad``. Progress events while the cache is built:
    ``{"event": "index", "done": files, "total": None}``.

        >>> data = api.open_dataset("Model_III", data_root="data")  # doctest: +SKIP
        >>> data.images.shape, data.classes  # doctest: +SKIP
        ((60, 1, 64, 64), ['axion', 'cdm', 'no_sub'])
    """
    _path("path_or_name", path_or_name)
    _path("data_root", data_root, optional=True)
    if split not in DATASET_SPLITS:
        raise DeepLenseError(f"unknown split {split!r}; use {' or '.join(DATASET_SPLITS)}")
    folder = dataset_folder(path_or_name, data_root, test=split == "test")
    with _counter(progress, "index", None, unit="file") as advance:
        done = 0

        def indexed(n: int, total: int) -> None:
            nonlocal done
            if advance is not None:
                advance(n - done)
            done = n

        image_set = load_image_set(folder, skip_bad=skip_bad, progress=indexed)
    return Dataset(image_set)


# ---- training -------------------------------------------------------------------------
class Run:
    """A training run's directory (``deeplense train``'s): its resolved configuration,
    metrics per epoch, checkpoints and test evaluation. A Run is a path-like, so it goes
    wherever a run directory goes (``api.evaluate(run)``, ``api.load_model(run)``)."""

    def __init__(self, run: RunDir, evaluation: dict[str, Any] | None = None) -> None:
        self.rundir = run
        self._evaluation = evaluation

    @classmethod
    def open(cls, path: PathArg) -> Run:
        """An existing run directory.

        >>> api.Run.open("no/such/run")
        Traceback (most recent call last):
        ...
        deeplense_cli.core.errors.DeepLenseError: no/such/run is not a deeplense run directory (no config.yaml); pass the directory that `deeplense train` printed
        """
        return cls(RunDir.open(str(_path("path", path))))

    @property
    def path(self) -> Path:
        return self.rundir.path

    def __fspath__(self) -> str:
        return os.fspath(self.rundir.path)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved configuration it ran with (``config.yaml``)."""
        return self.rundir.read_config()

    @property
    def model_name(self) -> str:
        return str(self.config["model"]["name"])

    @property
    def classes(self) -> list[str]:
        return self.rundir.classes

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per completed epoch (``metrics.jsonl``): ``epoch``, ``train_loss``,
        ``val_loss``, ``val_accuracy``, ``val_macro_auc``, ``lr``, ``best``..."""
        return self.rundir.read_metrics()

    @property
    def best_epoch(self) -> int | None:
        best = [row["epoch"] for row in self.history if row.get("best")]
        return int(best[-1]) if best else None

    @property
    def best_checkpoint(self) -> Path:
        """``checkpoints/best.pt``: what evaluation, export and prediction use."""
        return self.rundir.checkpoint_path("best")

    @property
    def evaluation(self) -> dict[str, Any] | None:
        """The test-split evaluation's metrics (``evaluation/metrics.json``); None until
        the run has been evaluated."""
        if self._evaluation is not None:
            return self._evaluation
        path = self.rundir.evaluation_dir / "metrics.json"
        if not path.is_file():
            return None
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise DeepLenseError(f"cannot read {path}: {exc}") from None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def _file_config(config: PathArg | dict[str, Any] | Run | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Run):
        return config_from_mapping(config.config, f"config of {config.path}")
    if isinstance(config, dict):
        return config_from_mapping(config)
    if not isinstance(config, str | os.PathLike):
        raise TypeError(
            "config must be a YAML file's path, a mapping, a Run or None, "
            f"got {type(config).__name__} {config!r:.60}"
        )
    return load_config_file(os.fspath(config))


def _reporter(progress: Progress) -> Reporter:
    _check_progress(progress)
    if progress is None:
        return SilentReporter()
    if isinstance(progress, str):
        return BarReporter()
    return CallbackReporter(progress)


class _WarnOnStart:
    """Passes the loop's events on, and raises the start event's warnings (emulated bf16,
    skipped files) as Python warnings, which notebooks and scripts show."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def start(self, info: dict[str, Any]) -> None:
        for message in info.get("warnings") or []:
            warnings.warn(message, stacklevel=2)
        self.inner.start(info)

    def batch(self, epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        self.inner.batch(epoch, step, steps, loss, images_per_s)

    def epoch(self, row: dict[str, Any]) -> None:
        self.inner.epoch(row)

    def end(self, summary: dict[str, Any]) -> None:
        self.inner.end(summary)


@_one_line
def train(
    model: str | None = None,
    *,
    dataset: str | None = None,
    data: PathArg | Dataset | None = None,
    data_root: PathArg | None = None,
    config: PathArg | dict[str, Any] | Run | None = None,
    run_dir: PathArg | None = None,
    run_root: PathArg | None = None,
    evaluate: bool = True,
    loggers: str | Sequence[str] | None = None,
    experiment: str | None = None,
    progress: Progress = None,
    **settings: Any,
) -> Run:
    """Train ``model`` (an architecture name, see :func:`architectures`) on ``dataset``
    (``Model_III`` under ``data_root``) or ``data`` (any class-per-folder tree, or a
    :class:`Dataset`), as ``deeplense train`` does; returns the :class:`Run`.

    Settings: architecture defaults < ``config`` (a YAML file, a mapping or another run's
    config) < ``settings``, keyword arguments named like ``--set`` keys: training and data
    settings (``epochs=3``, ``lr=3e-4``, ``batch_size=32``, ``max_train_per_class=100``),
    the model's hyper-parameters (``dropout=0.1``); dotted keys go through a dict
    (``**{"model.depth": 4}``). ``run_dir``: an empty or new folder, else a new dated one
    under ``run_root``. ``evaluate``: evaluate the best checkpoint on the test split at the
    end. ``loggers``: experiment trackers, as ``--log`` takes them (``["tensorboard",
    "mlflow"]`` or ``"tensorboard,mlflow"``), under ``experiment`` (default ``deeplense``);
    the config's ``tracking`` section otherwise. ``progress``: events as ``deeplense train
    --output jsonl`` prints them (``start``, ``batch``, ``epoch``, ``end``). A run that fails before its first checkpoint leaves no
    folder; an interrupted one (KeyboardInterrupt) can be continued with
    ``deeplense train --resume``.

        >>> run = api.train("resnet18", dataset="Model_III", data_root="data", epochs=2,
        ...                 batch_size=16, progress="bar")  # doctest: +SKIP
        >>> run.history[-1]["val_accuracy"], run.evaluation["accuracy"]  # doctest: +SKIP
        (0.83, 0.8)
    """
    from deeplense_cli.training.loop import train as run_training

    _name("model", model)
    _name("dataset", dataset)
    data_path = data.root if isinstance(data, Dataset) else _path("data", data, optional=True)
    for arg, value in (("data_root", data_root), ("run_dir", run_dir), ("run_root", run_root)):
        _path(arg, value, optional=True)
    flags: dict[str, dict[str, Any]] = {
        "model": {"name": model},
        "data": {
            "dataset": dataset,
            "data": None if data_path is None else os.fspath(data_path),
            "data_root": None if data_root is None else os.fspath(data_root),
        },
        "tracking": {
            # a string as --log takes it ("tensorboard,mlflow"), else a list of names
            "loggers": loggers if loggers is None or isinstance(loggers, str) else list(loggers),
            "experiment": experiment,
        },
    }
    resolved = resolve(_file_config(config), flags, settings)
    reporter = _WarnOnStart(_reporter(progress))
    check_device(resolved)
    with start_run(resolved, run_dir, run_root) as run:
        result = run_training(resolved, run, reporter=reporter, evaluate=evaluate)
    return Run(run, result.evaluation)


# ---- evaluation and export ------------------------------------------------------------
@_one_line
def evaluate(
    target: Run | PathArg,
    *,
    data: PathArg | Dataset | None = None,
    dataset: str | None = None,
    data_root: PathArg | None = None,
    split: str = "test",
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE,
    skip_bad: bool = False,
    out: PathArg | None = None,
    progress: Progress = None,
    tta: str | None = None,
) -> Evaluation:
    """Evaluate a run (PyTorch, on its ``split`` or on ``data``/``dataset``), an exported
    ``.onnx`` file or a shipped model (ONNX Runtime, on ``data`` or ``dataset``'s test
    folder), as ``deeplense evaluate`` does, writing the same files.

    Returns an :class:`Evaluation`: ``metrics`` (what ``deeplense evaluate --json`` prints:
    ``accuracy``, ``auc`` per class, ``macro_auc``, ``confusion_matrix``,
    ``axion_mass_bins``...) and ``figures``, matplotlib Figures by name: ``roc``,
    ``confusion_matrix`` and, when the images carry axion masses, ``axion_mass``. Progress
    events: ``{"event": "evaluate", "done": images, "total": None}``.

        >>> result = api.evaluate("Model_III", data="data/Model_III_test")  # doctest: +SKIP
        >>> result.metrics["accuracy"], sorted(result.figures)  # doctest: +SKIP
        (1.0, ['axion_mass', 'confusion_matrix', 'roc'])
    """
    _path("target", target)
    _name("dataset", dataset)
    data_path = data.root if isinstance(data, Dataset) else _path("data", data, optional=True)
    data_arg = None if data_path is None else os.fspath(data_path)
    root_arg = _path("data_root", data_root, optional=True)
    out_arg = _path("out", out, optional=True)
    out_dir = None if out_arg is None else Path(out_arg)
    with _counter(progress, "evaluate", None) as advance:
        return evaluate_target(
            os.fspath(target),
            split=split,
            data=data_arg,
            dataset=dataset,
            data_root=root_arg,
            checkpoint=checkpoint,
            device=device,
            batch_size=batch_size,
            skip_bad=skip_bad,
            out_dir=out_dir,
            progress=advance,
            tta=tta,
        )


@_one_line
def export_onnx(
    run: Run | PathArg,
    output: PathArg | None = None,
    *,
    precision: str = DEFAULT_PRECISION,
    opset: int = DEFAULT_OPSET,
    checkpoint: str = "best",
    exporter: str = EXPORTERS[0],
    validation_images: int = VALIDATION_IMAGES,
    standard_ops: bool = False,
    int8_scheme: str | None = None,
    progress: Progress = None,
    tta: str = "none",
) -> ExportResult:
    """Export a run to one self-contained ONNX file (``deeplense export onnx``), validated
    against PyTorch on the run's test images before it is written (default
    ``RUN/model.onnx``, ``RUN/model-fp16.onnx``, ``RUN/model-int8.onnx``).

    Returns the result: ``path``, ``size_bytes``, ``checks`` (ONNX Runtime versus PyTorch),
    ``accuracy_torch``/``accuracy_onnx`` for int8. Progress events: ``{"event": "export",
    "message": stage}``.

        >>> export = api.export_onnx(run, precision="int8")  # doctest: +SKIP
        >>> export.path.name  # doctest: +SKIP
        'model-int8.onnx'
    """
    from deeplense_cli.deploy.export import export_onnx as run_export

    _path("run", run)
    _path("output", output, optional=True)
    _check_progress(progress)
    bar: Any = None
    callback: Callable[[str], None] | None = None
    if isinstance(progress, str):
        bar = progress_bar(total=None, bar_format="{desc} ({elapsed})", desc="export")
        callback = bar.set_description_str
    elif progress is not None:
        report = progress

        def callback(message: str) -> None:
            report({"event": "export", "message": message})

    try:
        return run_export(
            os.fspath(run),
            output=output,
            opset=opset,
            precision=precision,
            checkpoint=checkpoint,
            exporter=exporter,
            validation_images=validation_images,
            standard_ops=standard_ops,
            int8_scheme=int8_scheme,
            progress=callback,
            tta=tta,
        )
    finally:
        if bar is not None:
            bar.close()


# ---- prediction -----------------------------------------------------------------------
@dataclass
class Predictions:
    """Class probabilities for a batch of images, in the model's class order."""

    classes: list[str]
    probabilities: np.ndarray  # (N, classes), float64, rows sum to 1
    paths: list[str] | None = None  # the files, for Model.predict_files
    axion_mass: list[float | None] | None = None  # from the files, where they carry one
    skipped: list[str] = field(default_factory=list)  # "path: why", with skip_bad
    # the out-of-distribution flag (None: the model has no detector): an image whose score
    # is above the model's threshold does not look like its training data
    ood_score: np.ndarray | None = None
    threshold: float | None = None

    @property
    def in_distribution(self) -> np.ndarray | None:
        """``(N,)`` True where the image looks like the model's training data."""
        if self.ood_score is None or self.threshold is None:
            return None
        return np.asarray(self.ood_score <= self.threshold)

    def __len__(self) -> int:
        return len(self.probabilities)

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` index of the most probable class."""
        return np.asarray(self.probabilities.argmax(axis=1), dtype=np.int64)

    @property
    def predicted(self) -> list[str]:
        """The most probable class of each image."""
        return [self.classes[int(i)] for i in self.labels]


def _stack(images: list[Any] | tuple[Any, ...], resize: bool) -> np.ndarray | list[np.ndarray]:
    """A list of images as one batch; images of different sizes are an error that names the
    first that differs, unless ``resize`` (then the list, to be resized one by one)."""
    arrays = []
    for i, image in enumerate(images):
        array = np.asarray(image)
        if array.dtype == object or array.ndim not in (2, 3):
            raise DeepLenseError(
                f"images[{i}] is not an image array (H, W) or (1, H, W): "
                f"{type(image).__name__} of shape {array.shape}"
            )
        arrays.append(array)
    shapes = [a.shape for a in arrays]
    if len(set(shapes)) <= 1:
        return np.stack(arrays) if arrays else np.zeros((0, 1, 1))
    if resize:
        return arrays
    i = next(i for i, shape in enumerate(shapes) if shape != shapes[0])
    raise DeepLenseError(
        f"images[{i}] has shape {shapes[i]} but images[0] has {shapes[0]}; give images of "
        "one size, or pass resize=True to resize each to the model's size"
    )


class Model:
    """A trained model ready to predict (:func:`load_model`)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    @property
    def task(self) -> str:
        """``classify``, or ``axion-mass`` for a regressor (:meth:`predict_mass`)."""
        return "axion-mass" if getattr(self.predictor, "target", None) is not None else "classify"

    def predict_mass(
        self,
        images: np.ndarray,
        *,
        batch_size: int = PREDICT_BATCH_SIZE,
        resize: bool = False,
    ) -> np.ndarray:
        """An axion-mass model's (``train --task axion-mass``) estimates: log10 of the axion
        mass in eV, one per image, for images as :meth:`predict` takes them."""
        return predict_log10_mass(self.predictor, images, batch_size=batch_size, resize=resize)

    @property
    def image_size(self) -> int:
        """The side of the images it takes (before its own centre crop, if any)."""
        return source_size(self.predictor.transform)

    @property
    def device(self) -> str:
        return self.predictor.device

    def describe(self) -> str:
        """Architecture, precision and where it runs."""
        return self.predictor.describe()

    def predict(
        self,
        images: np.ndarray | list[np.ndarray] | tuple[np.ndarray, ...],
        *,
        batch_size: int = PREDICT_BATCH_SIZE,
        resize: bool = False,
    ) -> Predictions:
        """Probabilities for images in memory: one ``(H, W)`` image or a batch
        ``(N, H, W)`` or ``(N, 1, H, W)``, or a list of images, raw (as in the data files:
        the model applies its own transform). An image of another size (than the model's, or
        than the list's first) is an error unless ``resize`` (bilinear, as ``--resize``);
        NaN or Inf pixels are an error.

            >>> model = api.load_model("Model_III")
            >>> model.predict(np.random.default_rng(0).random((2, 64, 64))).probabilities.shape
            (2, 3)
        """
        self._classifier("predict")
        batch = _stack(images, resize) if isinstance(images, list | tuple) else images
        threshold = self.predictor.ood_threshold
        if isinstance(batch, list):  # sizes differ: each is resized on its own
            each = [predict_arrays_scored(self.predictor, im, resize=True) for im in batch]
            scores = [s for _, s in each if s is not None]
            return Predictions(
                self.classes,
                np.concatenate([p for p, _ in each]),
                ood_score=np.concatenate(scores) if threshold is not None else None,
                threshold=threshold,
            )
        probs, score = predict_arrays_scored(
            self.predictor, batch, batch_size=batch_size, resize=resize
        )
        return Predictions(self.classes, probs, ood_score=score, threshold=threshold)

    def predict_files(
        self,
        paths: PathArg | Iterable[PathArg],
        *,
        batch_size: int = PREDICT_BATCH_SIZE,
        resize: bool = False,
        skip_bad: bool = False,
    ) -> Predictions:
        """Probabilities for image files, or every supported file in folders (searched
        recursively), as ``deeplense predict`` reads them (.npy, the released axion
        ``[image, mass]`` arrays included, .npz, FITS, PNG, JPEG). Unreadable files are an
        error unless ``skip_bad`` (then listed in ``skipped``).

            >>> model = api.load_model("Model_III")
            >>> model.predict_files("examples/real_samples").predicted  # doctest: +SKIP
            ['axion', 'cdm', 'no_sub']
        """
        self._classifier("predict_files")
        if isinstance(paths, str | os.PathLike):
            inputs = [paths]
        elif isinstance(paths, Iterable):
            inputs = list(paths)
            for i, item in enumerate(inputs):
                _path(f"paths[{i}]", item)
        else:
            _path("paths", paths)
        files = find_images(inputs)
        if not files:
            raise DeepLenseError("no image files found in the inputs (.npy, .npz, FITS, PNG, JPEG)")
        summary = Summary(model=self.describe(), device=self.device, classes=self.classes)
        preds = list(iter_predictions(self.predictor, files, batch_size, resize, skip_bad, summary))
        probs = np.array([p.probabilities for p in preds], dtype=np.float64)
        return Predictions(
            self.classes,
            probs.reshape(len(preds), len(self.classes)),
            paths=[p.path for p in preds],
            axion_mass=[p.axion_mass for p in preds],
            skipped=list(summary.skipped),
            ood_score=(
                None
                if self.predictor.ood_threshold is None
                else np.array([p.ood_score for p in preds], dtype=np.float64)
            ),
            threshold=self.predictor.ood_threshold,
        )

    def _classifier(self, method: str) -> None:
        if self.task != "classify":
            raise DeepLenseError(
                f"{self.describe()} is an axion-mass model: Model.{method} gives class "
                "probabilities; use Model.predict_mass (log10 of the mass in eV)"
            )

    def __repr__(self) -> str:
        return f"Model({self.describe()})"


@_one_line
def load_model(
    model: Run | PathArg,
    *,
    device: str = "auto",
    threads: int | None = None,
    checkpoint: str = "best",
) -> Model:
    """A model to predict with: an exported ``.onnx`` file or a shipped model's name
    (:func:`pretrained_models`; ONNX Runtime, no PyTorch), or a run directory (PyTorch,
    its ``checkpoint``). ``device``: auto, cpu, cuda or tensorrt (ONNX).

        >>> api.load_model("Model_III").classes
        ['axion', 'cdm', 'no_sub']
        >>> api.load_model("no_such_model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        deeplense_cli.core.errors.DeepLenseError: no_such_model is neither a file nor a shipped model (shipped: Model_I, ...; see `deeplense models pretrained`)
    """
    predictor = load_predictor(
        str(_path("model", model)), device=device, threads=threads, checkpoint=checkpoint
    )
    info = getattr(predictor, "info", None)
    if info is not None:
        warning = int8_saturation_warning(info, predictor.device, cpu_flags())
        if warning:
            warnings.warn(warning, stacklevel=2)
    return Model(predictor)
