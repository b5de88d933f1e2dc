"""Export a trained run to one self-contained ONNX file, and prove that it is right.

Every export is validated before it is written: ``onnx.checker``, then ONNX Runtime
against the PyTorch model on real test images of the run (its test split; a synthetic
batch when the run's data is not on this machine, and the result says so), at batch 1 and
at a larger batch (:mod:`deeplense_cli.deploy.validate`). A file that fails is never
written: the model is built in a temporary file beside the target and renamed into place
only after it passed. fp16 and int8 files are converted from the fp32 export
(:mod:`deeplense_cli.deploy.precision`, which says what each precision is for).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core import atomic
from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.core.logs import silenced_output
from deeplense_cli.core.version import __version__
from deeplense_cli.data.splits import load_splits
from deeplense_cli.data.targets import log10_mass, mass_only
from deeplense_cli.data.transforms import apply_transform, source_size
from deeplense_cli.deploy.defaults import (
    DEFAULT_OPSET,
    DYNAMO_OPSET,
    EXPORTERS,
    MAX_OPSET,
    MIN_OPSET,
    VALIDATION_IMAGES,
)
from deeplense_cli.deploy.mass_export import check_masses, regression_metadata
from deeplense_cli.deploy.mass_export import tolerance_text as mass_tolerance
from deeplense_cli.deploy.onnx_graph import STANDARD_DOMAINS, reorder_gelu, rewrite_einsum
from deeplense_cli.deploy.onnx_session import FORMAT, INPUT_NAME, OUTPUT_NAME, import_ort, shareable
from deeplense_cli.deploy.ood_graph import embed_detector
from deeplense_cli.deploy.precision import (
    DEFAULT_INT8_SCHEME,
    DEFAULT_PRECISION,
    PRECISIONS,
    convert_fp16,
    file_name,
    int8_scheme_types,
    quantize_int8,
)
from deeplense_cli.deploy.validate import (
    INT8_MIN_AGREEMENT,
    Check,
    mismatch,
    tolerance_text,
    torch_logits,
    validate,
)
from deeplense_cli.evaluation.ood import CALIBRATION_IMAGES, FIT_IMAGES, spread, with_degraded
from deeplense_cli.evaluation.tta import check_tta
from deeplense_cli.layers.attention import unfused_attention
from deeplense_cli.layers.export_forms import export_copy
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.runs.task import is_regression
from deeplense_cli.tracking import add_artifacts

if TYPE_CHECKING:
    import torch


@dataclass
class ExportResult:
    path: Path
    architecture: str
    precision: str
    opset: int
    exporter: str
    size_bytes: int
    data: str  # where the validation images came from
    real_data: bool
    checks: list[Check] = field(default_factory=list)
    accuracy_torch: float | None = None
    accuracy_onnx: float | None = None
    tolerance: str = ""
    contrib_ops: list[str] = field(default_factory=list)  # ONNX Runtime-only operators
    int8_scheme: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    ood: dict[str, Any] | None = None  # the embedded out-of-distribution detector
    # an axion-mass model: ONNX Runtime against PyTorch in dex, and their MAE (dex)
    regression: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _log(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


# ---- data -----------------------------------------------------------------------------
@dataclass
class _Data:
    test: np.ndarray  # transformed (N, C, S, S)
    labels: np.ndarray | None
    calibration: np.ndarray  # transformed training images
    note: str
    real: bool
    # the out-of-distribution detector's images: training images to fit it on (with their
    # labels) and held-back validation images to set its threshold (None: no run data)
    fit: np.ndarray | None = None
    fit_labels: np.ndarray | None = None
    held: np.ndarray | None = None
    log10_mass: np.ndarray | None = None  # an axion-mass model's test targets


def _load_data(
    run: RunDir,
    transform: dict[str, Any],
    n_test: int,
    n_calibration: int,
    seed: int = 0,
    degraded: bool = False,
) -> _Data:
    """Test and calibration images of the run; a synthetic batch when its data is missing."""

    rng = np.random.default_rng(seed)
    try:
        splits = load_splits(run.read_config())
        if is_regression(run.task):  # its images: those that carry a mass
            splits = mass_only(splits)
        if list(splits.classes) != run.classes:
            raise DeepLenseError(f"the run's data now has classes {splits.classes}")
        if len(splits.test_idx) == 0:
            raise DeepLenseError("the run's test split is empty")
    except (DeepLenseError, KeyError) as exc:
        size, channels = source_size(transform), int(transform.get("in_channels", 1))
        # Smooth random blobs plus noise: images with structure, not a constant.
        yy, xx = np.mgrid[0:size, 0:size] / size
        n = max(n_test, n_calibration)
        cx, cy, w = rng.uniform(0.3, 0.7, (3, n, 1, 1))
        blobs = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.05 * w))
        raw = blobs[:, None] + 0.05 * rng.standard_normal((n, channels, size, size))
        x = apply_transform(raw.astype(np.float32), transform)
        return _Data(
            test=x[:n_test],
            labels=None,
            calibration=x[:n_calibration],
            note=f"a synthetic batch of {n_test} images (the run's data is not available: "
            f"{first_line(exc)})",
            real=False,
        )
    test_idx = np.sort(rng.permutation(splits.test_idx)[:n_test])
    calib_idx = np.sort(rng.permutation(splits.train_idx)[:n_calibration])
    test = apply_transform(np.asarray(splits.test.images[test_idx]), transform)
    calibration = apply_transform(np.asarray(splits.train.images[calib_idx]), transform)
    labels = np.asarray(splits.test.labels)[test_idx]
    fit_idx = spread(splits.train_idx, FIT_IMAGES)
    held_idx = spread(splits.val_idx, CALIBRATION_IMAGES)
    fit_raw, held_raw = np.asarray(splits.train.images[fit_idx]), splits.train.images[held_idx]
    fit_labels: np.ndarray | None = np.asarray(splits.train.labels)[fit_idx]
    if is_regression(run.task):  # one mean
        fit_labels = np.zeros(len(fit_idx), dtype=np.int64)
    if degraded:  # a model trained to answer 8-bit files must not flag them
        fit_raw, fit_labels = with_degraded(fit_raw, fit_labels)
        held_raw = with_degraded(np.asarray(held_raw), None)[0]
    return _Data(
        test=test,
        labels=labels,
        calibration=calibration,
        note=f"{len(test_idx)} images of the run's test split ({splits.test.root})",
        real=True,
        fit=apply_transform(fit_raw, transform),
        fit_labels=fit_labels,
        held=apply_transform(np.asarray(held_raw), transform),
        log10_mass=log10_mass(splits.test, test_idx),
    )


# ---- steps ----------------------------------------------------------------------------
def _attempts(exporter: str) -> tuple[str, ...]:
    """The exporters to try in turn: auto tries every other one, in :data:`EXPORTERS` order."""
    return EXPORTERS[1:] if exporter == EXPORTERS[0] else (exporter,)


def export_fp32(
    model: torch.nn.Module,
    example: np.ndarray,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    exporter: str = EXPORTERS[0],
    rewrite: bool = True,
    standard_ops: bool = False,
) -> tuple[str, int]:
    """Export ``model`` with a dynamic batch axis to ONE file; returns (exporter, opset).

    ``rewrite`` (default) applies the exact speed rewrites: nn.Unfold as a convolution
    and the models' export forms (:mod:`deeplense_cli.layers.export_forms`), einsums as MatMuls
    (:mod:`deeplense_cli.deploy.onnx_graph`); ``False`` is for measuring what they buy.
    ``standard_ops`` keeps attention in standard ONNX operators instead of ONNX Runtime's
    fused ``com.microsoft`` MultiHeadAttention (for other runtimes; slower in ONNX Runtime).

    ``legacy`` (TorchScript tracing) exports all eleven built-in architectures in seconds
    and its graphs run as fast as the dynamo exporter's once ONNX Runtime has optimised
    them; ``auto`` uses it and falls back to ``dynamo`` (opset >= :data:`DYNAMO_OPSET`) if it fails.
    """
    import torch

    if exporter not in EXPORTERS:
        raise DeepLenseError(f"unknown exporter {exporter!r}; use {', '.join(EXPORTERS)}")
    x = torch.from_numpy(np.ascontiguousarray(example[:2], dtype=np.float32))
    if len(x) < 2:  # batch 2, so that no size-1 batch gets specialised
        x = torch.cat([x, x])

    if rewrite:
        model, _ = export_copy(model)  # same numbers, a graph ORT runs faster (see the module)
    errors = []
    for kind in _attempts(exporter):
        used_opset = max(opset, DYNAMO_OPSET) if kind == "dynamo" else opset
        plain = unfused_attention() if standard_ops else contextlib.nullcontext()
        try:
            with silenced_output(), torch.inference_mode(False), torch.no_grad(), plain:
                if kind == "legacy":
                    torch.onnx.export(
                        model,
                        (x,),
                        os.fspath(path),
                        dynamo=False,
                        opset_version=used_opset,
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                        do_constant_folding=True,
                    )
                else:
                    # dynamic_shapes positionally: the forward argument is named `img`
                    # in vit-pytorch, and a wrong name bakes the batch size in.
                    torch.onnx.export(
                        model,
                        (x,),
                        os.fspath(path),
                        dynamo=True,
                        opset_version=used_opset,
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},),
                        external_data=False,
                    )
        except Exception as exc:
            failure = atomic.write_failure(exc, path)
            if failure is not None:  # full or read-only: another exporter fares no better
                raise failure from None
            errors.append(f"{kind}: {first_line(exc)}")
            continue
        data_file = Path(f"{os.fspath(path)}.data")
        if data_file.exists():  # never leave a side file; weights must be inside
            data_file.unlink()
            errors.append(f"{kind}: wrote external data")
            continue
        if rewrite:
            _rewrite_graph(path)
        return kind, used_opset
    raise DeepLenseError("ONNX export failed (" + "; ".join(errors) + ")")


def _rewrite_graph(path: str | os.PathLike[str]) -> int:
    """Einsums to MatMuls, GELUs into the order ONNX Runtime fuses
    (:mod:`deeplense_cli.deploy.onnx_graph`); returns how many nodes were rewritten."""
    import onnx

    model = onnx.load(os.fspath(path))
    count = rewrite_einsum(model) + reorder_gelu(model)
    if count:
        onnx.checker.check_model(model)
        onnx.save(model, os.fspath(path))
    return count


def contrib_ops(path: str | os.PathLike[str]) -> list[str]:
    """The operators of the model at ``path`` outside the standard ONNX domains (ONNX
    Runtime's ``com.microsoft`` fused attention, for one), as ``domain.OpType``."""
    import onnx

    graph = onnx.load(os.fspath(path)).graph
    return sorted(
        {f"{n.domain}.{n.op_type}" for n in graph.node if n.domain not in STANDARD_DOMAINS}
    )


def set_metadata(path: str | os.PathLike[str], meta: dict[str, str]) -> None:
    """Replace the model's metadata_props with ``meta`` and save it as one file."""
    import onnx

    model = onnx.load(os.fspath(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    model.producer_name = "deeplense"
    model.producer_version = __version__
    onnx.save(model, os.fspath(path))


def default_output(run: RunDir, precision: str) -> Path:
    return run.path / file_name(precision)


@dataclass(frozen=True)
class _Options:
    """What the user asked of the file, checked before the model loads."""

    precision: str
    opset: int
    batch_sizes: tuple[int, ...]
    min_agreement: float
    standard_ops: bool
    int8_scheme: str
    tta: str


@dataclass(frozen=True)
class _Source:
    """The model being exported and what its file is checked against."""

    run: RunDir
    model: torch.nn.Module
    architecture: str
    checkpoint: str  # the metadata's words, "best (epoch 12)"
    data: _Data
    reference: np.ndarray  # PyTorch's logits for data.test


def _metadata(source: _Source, options: _Options, exporter: str, opset: int) -> dict[str, str]:
    """The file's metadata_props: what ``predict`` needs and where the file came from."""
    run, transform = source.run, source.run.transform
    meta = {
        "deeplense.format": FORMAT,
        "deeplense.architecture": source.architecture,
        "deeplense.classes": json.dumps(run.classes),
        "deeplense.image_size": str(int(transform["image_size"])),
        "deeplense.in_channels": str(int(transform.get("in_channels", 1))),
        "deeplense.transform": json.dumps(transform, sort_keys=True),
        "deeplense.version": __version__,
        "deeplense.source_run": str(run.path.resolve()),
        "deeplense.checkpoint": source.checkpoint,
        "deeplense.opset": str(opset),
        "deeplense.precision": options.precision,
        "deeplense.exporter": exporter,
    }
    if options.tta != "none":
        meta["deeplense.tta"] = options.tta
    meta.update(regression_metadata(run))  # an axion-mass model's target
    if options.precision == "int8":
        meta["deeplense.int8_scheme"] = options.int8_scheme
    return meta


def _convert(
    fp32: Path,
    dst: Path,
    workdir: Path,
    calibration: np.ndarray,
    options: _Options,
    progress: Callable[[str], None] | None,
) -> None:
    """The fp32 file at the precision asked for, written to ``dst``."""
    if options.precision == "fp32":
        os.replace(fp32, dst)
    elif options.precision == "fp16":
        _log(progress, "converting to fp16")
        convert_fp16(fp32, dst)
    else:
        _log(progress, f"calibrating int8 ({options.int8_scheme}) on {len(calibration)} images")
        quantize_int8(fp32, dst, calibration, workdir, scheme=options.int8_scheme)


def _export_validated(
    kind: str,
    source: _Source,
    options: _Options,
    target: Path,
    progress: Callable[[str], None] | None,
) -> ExportResult:
    """One attempt with the exporter ``kind``: export, convert, validate, then write
    ``target``; a DeepLenseError (nothing written) when the file does not match PyTorch."""
    data, precision = source.data, options.precision
    # The work folder sits beside the target: one filesystem, so the finished model is
    # renamed into place (a system temporary folder may be another filesystem).
    with atomic.temp_folder(target) as workdir:
        fp32_path = workdir / "fp32.onnx"
        _log(progress, f"exporting ({kind} exporter)")
        used_exporter, used_opset = export_fp32(
            source.model,
            data.test,
            fp32_path,
            options.opset,
            kind,
            standard_ops=options.standard_ops,
        )
        meta = _metadata(source, options, used_exporter, used_opset)
        with atomic.atomic_path(target, suffix=".onnx") as tmp:
            _convert(fp32_path, tmp, workdir, data.calibration, options, progress)
            contrib = contrib_ops(tmp)
            meta["deeplense.contrib_ops"] = json.dumps(contrib)
            set_metadata(tmp, meta)
            _log(progress, "validating with ONNX Runtime")
            regressor = "deeplense.task" in meta  # checked in dex, its detector has one mean
            checks, onnx_logits = validate(
                tmp,
                source.reference,
                data.test,
                precision,
                options.batch_sizes,
                min_agreement=options.min_agreement,
                regressor=regressor,
            )
            result = ExportResult(
                path=target,
                architecture=source.architecture,
                precision=precision,
                opset=used_opset,
                exporter=used_exporter,
                size_bytes=0,
                data=data.note,
                real_data=data.real,
                checks=checks,
                tolerance=(
                    mass_tolerance(precision)
                    if regressor
                    else tolerance_text(precision, options.min_agreement)
                ),
                contrib_ops=contrib,
                int8_scheme=options.int8_scheme if precision == "int8" else None,
            )
            if regressor:
                result.regression = check_masses(
                    meta, precision, source.reference, onnx_logits, data.log10_mass
                )
            elif data.labels is not None:
                result.accuracy_torch = float((source.reference.argmax(1) == data.labels).mean())
                result.accuracy_onnx = float((onnx_logits.argmax(1) == data.labels).mean())
            if not data.real:
                result.notes.append("validated on synthetic images: " + data.note)
            failed = [c for c in checks if not c.passed]
            if failed:
                raise mismatch(failed[0], precision, result.tolerance)
            classes = 1 if regressor else len(source.run.classes)
            _embed_detector(tmp, data, classes, meta, result, progress)
            meta["deeplense.validation"] = json.dumps(_validation_record(result))
            set_metadata(tmp, meta)
            shareable(tmp)
            result.size_bytes = tmp.stat().st_size
    return result


def _validation_record(result: ExportResult) -> dict[str, Any]:
    """What the file's metadata keeps of its validation."""
    record: dict[str, Any] = {
        "data": result.data,
        "checks": [asdict(c) for c in result.checks],
        "accuracy_torch": result.accuracy_torch,
        "accuracy_onnx": result.accuracy_onnx,
    }
    if result.regression is not None:
        record["regression"] = result.regression
    return record


def _embed_detector(
    path: Path,
    data: _Data,
    num_classes: int,
    meta: dict[str, str],
    result: ExportResult,
    progress: Callable[[str], None] | None,
) -> None:
    """Give the file its out-of-distribution output, fitted on what the file computes for the
    run's training images and calibrated on its validation split; a note says why not."""
    if data.fit is None or data.fit_labels is None or data.held is None or not len(data.held):
        why = "the run has no validation split" if data.real else "the run's data is missing"
        result.notes.append(f"no out-of-distribution detector: {why}")
        return
    _log(progress, f"fitting the out-of-distribution detector on {len(data.fit)} images")
    try:
        detector = embed_detector(
            path,
            data.fit,
            data.fit_labels,
            num_classes,
            data.held,
            info={
                "fitted_on": f"{len(data.fit)} images of the run's training split",
                "calibrated_on": f"{len(data.held)} images of the run's validation split",
            },
        )
    except DeepLenseError as exc:
        result.notes.append(f"no out-of-distribution detector: {exc}")
        return
    meta["deeplense.ood"] = json.dumps(detector.summary())
    result.ood = detector.summary()


def export_onnx(
    run_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    precision: str = DEFAULT_PRECISION,
    checkpoint: str = "best",
    exporter: str = EXPORTERS[0],
    validation_images: int = VALIDATION_IMAGES,
    calibration_images: int = 256,
    batch_sizes: tuple[int, ...] = (1, 32),
    min_agreement: float = INT8_MIN_AGREEMENT,
    standard_ops: bool = False,
    int8_scheme: str | None = None,
    progress: Callable[[str], None] | None = None,
    tta: str = "none",
) -> ExportResult:
    """Export ``run_path``'s model to ONNX at ``precision``, validate it, then write it.

    The default output is ``RUN/model.onnx`` (``RUN/model-fp16.onnx``, ``model-int8.onnx``
    for the other precisions). Raises DeepLenseError, writing nothing, when validation fails.
    Attention layers that have a fused form export as ONNX Runtime's ``com.microsoft``
    MultiHeadAttention unless ``standard_ops`` (standard operators only, for other runtimes).
    ``int8_scheme`` (int8 only; default :data:`DEFAULT_INT8_SCHEME`) is the integer types.
    """
    if int8_scheme is not None and precision != "int8":
        raise DeepLenseError(f"--int8-scheme applies to --precision int8, not {precision}")
    int8_scheme = int8_scheme or DEFAULT_INT8_SCHEME
    import_ort()
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise DeepLenseError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise DeepLenseError(
            f"opset {opset} is out of range; use {MIN_OPSET} to {MAX_OPSET} "
            f"(default {DEFAULT_OPSET})"
        )
    if validation_images < 1:
        raise DeepLenseError("validation_images must be at least 1")
    int8_scheme_types(int8_scheme)  # fail before the model loads
    tta = check_tta(tta)
    if exporter not in EXPORTERS:
        raise DeepLenseError(f"unknown exporter {exporter!r}; use {', '.join(EXPORTERS)}")
    options = _Options(
        precision, int(opset), batch_sizes, min_agreement, standard_ops, int8_scheme, tta
    )
    run = RunDir.open(run_path)
    transform = run.transform
    config = run.read_config()
    arch_name = str(config["model"]["name"])
    target = Path(output) if output is not None else default_output(run, precision)
    if target.suffix != ".onnx":
        raise DeepLenseError(f"{target}: the output file name must end in .onnx")
    if target.is_dir():
        raise DeepLenseError(f"{target} is a folder; give a file name ending in .onnx")
    atomic.sweep(target.parent)  # what killed commands left half-written there

    _log(progress, f"loading {arch_name} ({checkpoint} checkpoint)")
    model = run.build_model(checkpoint)
    epoch = run.load_checkpoint(checkpoint).get("epoch")
    _log(progress, "loading validation images")
    degraded = float((config.get("train") or {}).get("degrade") or 0) > 0
    data = _load_data(run, transform, validation_images, calibration_images, degraded=degraded)
    source = _Source(
        run=run,
        model=model,
        architecture=arch_name,
        checkpoint=f"{checkpoint} (epoch {epoch})",
        data=data,
        reference=torch_logits(model, data.test),
    )

    kinds = _attempts(exporter)
    failures: list[str] = []
    for kind in kinds:
        try:
            result = _export_validated(kind, source, options, target, progress)
        except atomic.WriteError:
            raise  # full or read-only: the other exporter would fail the same way
        except DeepLenseError as exc:
            failures.append(f"{kind} exporter: {exc}")
            continue
        result.notes.extend(f"first attempt failed, {f}" for f in failures)
        result.seconds = time.perf_counter() - start
        add_artifacts(run.path, [target])  # to the run's tracker runs, if it was tracked
        return result
    reasons = {f.split(": ", 1)[1] for f in failures}
    # each exporter's own reason, or the one reason once when every exporter met it
    raise DeepLenseError("; ".join(failures) if len(reasons) > 1 else reasons.pop())
