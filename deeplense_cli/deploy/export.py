"""Export a trained run to one self-contained ONNX file, and prove that it is right.

Every export is validated before it is written: ``onnx.checker``, then ONNX Runtime
against the PyTorch model on real test images of the run (its test split; a synthetic
batch when the run's data is not on this machine, and the result says so), at batch 1 and
at a larger batch. A file that fails is never written: the model is built in a temporary
file beside the target and renamed into place only after it passed.

Precisions (benchmarks/bench_onnx.py; BENCHMARKS.md, 'ONNX Runtime versus PyTorch'):

* ``fp32`` -- the default; matches PyTorch to ~1e-6.
* ``fp16`` -- half the size, for GPUs (CUDA/TensorRT). On a CPU, ONNX Runtime casts back to
  fp32 around most operators, so it is SLOWER there.
* ``int8`` -- static QDQ quantisation, calibrated on training images: ~4x smaller, and on
  CPUs with VNNI (AVX512-VNNI / AVX-VNNI) much faster for the convolutional models; it
  changes predictions slightly, so the export reports the accuracy change on the test split.
  The default scheme (``u8s8-7bit``, 7-bit weights) computes the same integers on every x86
  CPU: full 8-bit weights saturate ONNX Runtime's kernels on CPUs without VNNI
  (``INT8_SCHEMES``; benchmarks/bench_int8.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core import atomic
from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.core.version import __version__
from deeplense_cli.data.splits import load_splits
from deeplense_cli.data.targets import log10_mass, mass_only
from deeplense_cli.data.transforms import apply_transform, source_size
from deeplense_cli.deploy.mass_export import check_masses, regression_metadata
from deeplense_cli.deploy.onnx_graph import reorder_gelu, rewrite_einsum, unshare_vectors
from deeplense_cli.deploy.onnx_session import (
    FORMAT,
    INPUT_NAME,
    OUTPUT_NAME,
    create_session,
    import_ort,
    shareable,
)
from deeplense_cli.deploy.ood_graph import embed_detector
from deeplense_cli.evaluation.metrics import softmax
from deeplense_cli.evaluation.ood import CALIBRATION_IMAGES, FIT_IMAGES, spread, with_degraded
from deeplense_cli.evaluation.tta import check_tta
from deeplense_cli.layers.attention import unfused_attention
from deeplense_cli.layers.export_forms import export_copy
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.runs.task import is_regression
from deeplense_cli.tracking import add_artifacts

if TYPE_CHECKING:
    import torch

PRECISIONS: dict[str, str] = {
    "fp32": "full precision; the reference, runs everywhere",
    "fp16": "half the file size, for GPUs (CUDA/TensorRT); on a CPU it is slower than fp32",
    "int8": (
        "static int8 (QDQ, calibrated on training images): ~4x smaller; on CPUs with VNNI "
        "much faster for convolutional models (ResNet18), little or no gain for some "
        "transformers; predictions change slightly (accuracy change is reported)"
    ),
}
EXPORTERS = ("auto", "legacy", "dynamo")
DEFAULT_OPSET = 17
# Elementwise logit tolerance: |onnx - torch| <= ABS + REL * max|torch logits|.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-3),
    "fp16": (2e-2, 2e-2),
}
STANDARD = ("", "ai.onnx")  # the standard operator domains
# int8 schemes: (activation type, weight type, 7-bit weights). ONNX Runtime's x86 kernels
# multiply uint8 activations by int8 weights; on CPUs without VNNI (AVX2, AVX-512 before
# VNNI) they add pairs of products in 16 bits (VPMADDUBSW), which saturates with full 8-bit
# weights (2 x 255 x 127 > 32,767) and moves logits. 7-bit weights cannot overflow there.
INT8_SCHEMES: dict[str, tuple[str, str, bool]] = {
    "u8s8-7bit": ("QUInt8", "QInt8", True),
    "u8s8": ("QUInt8", "QInt8", False),
    "u8u8": ("QUInt8", "QUInt8", False),
    "s8s8": ("QInt8", "QInt8", False),
}
DEFAULT_INT8_SCHEME = "u8s8-7bit"


def int8_scheme_types(scheme: str) -> tuple[str, str, bool]:
    """``INT8_SCHEMES[scheme]``; an unknown scheme is a DeepLenseError."""
    if scheme not in INT8_SCHEMES:
        raise DeepLenseError(f"unknown int8 scheme {scheme!r}; use {', '.join(INT8_SCHEMES)}")
    return INT8_SCHEMES[scheme]


INT8_MIN_AGREEMENT = 0.9  # int8: share of images whose top class matches PyTorch
# int8 is judged on the images PyTorch decides: where its two most probable classes are
# closer than this, rounding alone can swap them.
INT8_NEAR_TIE = 0.05


@dataclass
class Check:
    """ONNX Runtime versus PyTorch at one batch size."""

    batch_size: int
    images: int
    max_abs_error: float
    max_rel_error: float  # max |error| / max |PyTorch logit|
    argmax_agreement: float
    passed: bool
    # int8: the images judged (PyTorch's top two probabilities >= INT8_NEAR_TIE apart) and
    # the top-class agreement on them
    judged_images: int | None = None
    judged_agreement: float | None = None


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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress lines and deprecation warnings, including what
    PyTorch's C++ side writes to the process's stdout and stderr (a failed TorchScript
    export prints its whole graph there, thousands of lines; the error message itself
    reaches the user through the exception)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


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
def torch_logits(model: torch.nn.Module, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """PyTorch logits for a transformed batch, in chunks of ``batch_size``."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))))
    return torch.cat(out).float().numpy()


def export_fp32(
    model: torch.nn.Module,
    example: np.ndarray,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
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
    them; ``auto`` uses it and falls back to ``dynamo`` (opset >= 18) if it fails.
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
    for kind in ("legacy", "dynamo") if exporter == "auto" else (exporter,):
        used_opset = max(opset, 18) if kind == "dynamo" else opset
        plain = unfused_attention() if standard_ops else contextlib.nullcontext()
        try:
            with _quiet(), torch.inference_mode(False), torch.no_grad(), plain:
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


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """fp16 weights and activations; the input and output stay float32."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise DeepLenseError(
            "fp16 conversion needs onnxruntime.transformers (part of onnxruntime >= 1.16)"
        ) from None
    model = onnx.load(os.fspath(src))
    from onnxruntime.transformers.onnx_model import OnnxModel

    with _quiet():
        half = convert_float_to_float16(model, keep_io_types=True)
        # The converter appends the input/output casts at the end of the node list.
        wrapper = OnnxModel(half)
        wrapper.topological_sort()
    onnx.save(wrapper.model, os.fspath(dst))


class _Calibration:
    """A CalibrationDataReader over transformed training images, 16 at a time."""

    def __init__(self, images: np.ndarray, batch_size: int = 16) -> None:
        self.batches = [
            {INPUT_NAME: np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)}
            for i in range(0, len(images), batch_size)
        ]
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: np.ndarray,
    workdir: str | os.PathLike[str],
    scheme: str = DEFAULT_INT8_SCHEME,
) -> None:
    """Static QDQ int8 (``INT8_SCHEMES``): per-channel weights, activations calibrated
    (min-max) on training images. ONNX Runtime fuses the QDQ pairs into integer kernels."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    activations, weights, seven_bit = int8_scheme_types(scheme)
    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(calibration)
    src, dst = Path(src).resolve(), Path(dst).resolve()  # the block below changes directory
    pre = Path(workdir).resolve() / "preprocessed.onnx"
    # ORT's symbolic shape inference saves a debugging copy of the model into the current
    # directory when it cannot infer every shape: run it inside the temporary folder.
    with _quiet(), contextlib.chdir(workdir):
        try:
            quant_pre_process(os.fspath(src), os.fspath(pre))
            source = pre
        except Exception:  # symbolic shape inference fails on some graphs; it is optional
            source = Path(src)
        model = onnx.load(os.fspath(source))
        if unshare_vectors(model):
            source = Path(workdir).resolve() / "unshared.onnx"
            onnx.save(model, os.fspath(source))
        try:
            quantize_static(
                os.fspath(source),
                os.fspath(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=seven_bit,
                activation_type=getattr(QuantType, activations),
                weight_type=getattr(QuantType, weights),
            )
        except Exception as exc:  # ONNX Runtime's quantizer does not cover every graph
            failure = atomic.write_failure(exc, dst)
            if failure is not None:  # the destination's fault, not the quantizer's
                raise failure from None
            raise DeepLenseError(
                f"int8 quantisation of this model failed in ONNX Runtime "
                f"({type(exc).__name__}: {first_line(exc)}); export it as fp32 instead"
            ) from None


def contrib_ops(path: str | os.PathLike[str]) -> list[str]:
    """The operators of the model at ``path`` outside the standard ONNX domains (ONNX
    Runtime's ``com.microsoft`` fused attention, for one), as ``domain.OpType``."""
    import onnx

    graph = onnx.load(os.fspath(path)).graph
    return sorted({f"{n.domain}.{n.op_type}" for n in graph.node if n.domain not in STANDARD})


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


def compare(onnx_logits: np.ndarray, torch_logits_: np.ndarray) -> tuple[float, float, float]:
    """(max abs error, max abs error / max |reference|, top-class agreement)."""
    err = np.abs(onnx_logits.astype(np.float64) - torch_logits_.astype(np.float64))
    scale = float(np.abs(torch_logits_).max()) if torch_logits_.size else 0.0
    max_abs = float(err.max()) if err.size else 0.0
    agree = float((onnx_logits.argmax(1) == torch_logits_.argmax(1)).mean()) if err.size else 1.0
    return max_abs, max_abs / max(scale, 1e-12), agree


def _ort_logits(session: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch_size):
        chunk = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
        out.append(session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0])
    return np.concatenate(out).astype(np.float32)


def validate(
    path: str | os.PathLike[str],
    reference: np.ndarray,
    x: np.ndarray,
    precision: str,
    batch_sizes: tuple[int, ...] = (1, 32),
    batch1_images: int = 8,
    min_agreement: float = INT8_MIN_AGREEMENT,
) -> tuple[list[Check], np.ndarray]:
    """Run the model file on ONNX Runtime (CPU) and compare with PyTorch ``reference``.

    Returns the checks and ORT's logits at the largest batch size.
    """
    import onnx

    try:
        onnx.checker.check_model(os.fspath(path))
    except Exception as exc:
        raise DeepLenseError(f"the exported model fails onnx.checker: {first_line(exc)}") from None
    session, _ = create_session(path, "cpu", cache_optimized=False)
    checks, last = [], reference
    for bs in batch_sizes:
        # fp32/fp16 are judged per logit, which a few images show; int8 by the share of top
        # classes that agree, which needs every image (one flip in 8 would be 12.5 points).
        n = min(len(x), batch1_images) if bs == 1 and precision in TOLERANCES else len(x)
        got = _ort_logits(session, x[:n], bs)
        max_abs, max_rel, agree = compare(got, reference[:n])
        check = Check(bs, n, max_abs, max_rel, agree, passed=False)
        if precision in TOLERANCES:
            atol, rtol = TOLERANCES[precision]
            scale = float(np.abs(reference[:n]).max())
            check.passed = max_abs <= atol + rtol * scale
        else:
            judged = ~near_ties(reference[:n])
            same = got.argmax(1) == reference[:n].argmax(1)
            check.judged_images = int(judged.sum())
            check.judged_agreement = float(same[judged].mean()) if judged.any() else 1.0
            check.passed = check.judged_agreement >= min_agreement
        checks.append(check)
        last = got
    return checks, last


def near_ties(logits: np.ndarray) -> np.ndarray:
    """Rows whose two most probable classes are less than ``INT8_NEAR_TIE`` apart."""

    top2 = np.sort(softmax(logits.astype(np.float64)), axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0] < INT8_NEAR_TIE)


def _tolerance_text(precision: str, min_agreement: float) -> str:
    if precision in TOLERANCES:
        atol, rtol = TOLERANCES[precision]
        return f"|error| <= {atol:g} + {rtol:g} x max|logit|"
    return (
        f"top class agrees with PyTorch on >= {min_agreement:.0%} of the images PyTorch "
        f"decides (its top two classes >= {INT8_NEAR_TIE:.0%} of probability apart)"
    )


def _judged_text(check: Check) -> str:
    if check.judged_images is None or check.judged_agreement is None:
        return ""
    return f", {check.judged_agreement:.1%} of the {check.judged_images} images PyTorch decides"


def default_output(run: RunDir, precision: str) -> Path:
    return run.path / ("model.onnx" if precision == "fp32" else f"model-{precision}.onnx")


def _export_validated(
    kind: str,
    model: torch.nn.Module,
    data: _Data,
    reference: np.ndarray,
    target: Path,
    run: RunDir,
    arch_name: str,
    checkpoint: str,
    epoch: Any,
    precision: str,
    opset: int,
    batch_sizes: tuple[int, ...],
    min_agreement: float,
    standard_ops: bool,
    int8_scheme: str,
    progress: Callable[[str], None] | None,
    tta: str = "none",
) -> ExportResult:
    classes, transform = run.classes, run.transform
    # The work folder sits beside the target: one filesystem, so the finished model is
    # renamed into place (a system temporary folder may be another filesystem).
    with atomic.temp_folder(target) as workdir:
        fp32_path = workdir / "fp32.onnx"
        _log(progress, f"exporting ({kind} exporter)")
        used_exporter, used_opset = export_fp32(
            model, data.test, fp32_path, opset, kind, standard_ops=standard_ops
        )
        meta = {
            "deeplense.format": FORMAT,
            "deeplense.architecture": arch_name,
            "deeplense.classes": json.dumps(classes),
            "deeplense.image_size": str(int(transform["image_size"])),
            "deeplense.in_channels": str(int(transform.get("in_channels", 1))),
            "deeplense.transform": json.dumps(transform, sort_keys=True),
            "deeplense.version": __version__,
            "deeplense.source_run": str(run.path.resolve()),
            "deeplense.checkpoint": f"{checkpoint} (epoch {epoch})",
            "deeplense.opset": str(used_opset),
            "deeplense.precision": precision,
            "deeplense.exporter": used_exporter,
        }
        if tta != "none":
            meta["deeplense.tta"] = tta
        meta.update(regression_metadata(run, precision))  # an axion-mass model's target
        with atomic.atomic_path(target, suffix=".onnx") as tmp:
            if precision == "fp32":
                os.replace(fp32_path, tmp)
            elif precision == "fp16":
                _log(progress, "converting to fp16")
                convert_fp16(fp32_path, tmp)
            else:
                _log(
                    progress, f"calibrating int8 ({int8_scheme}) on {len(data.calibration)} images"
                )
                quantize_int8(fp32_path, tmp, data.calibration, workdir, scheme=int8_scheme)
                meta["deeplense.int8_scheme"] = int8_scheme
            contrib = contrib_ops(tmp)
            meta["deeplense.contrib_ops"] = json.dumps(contrib)
            set_metadata(tmp, meta)
            _log(progress, "validating with ONNX Runtime")
            checks, onnx_logits = validate(
                tmp, reference, data.test, precision, batch_sizes, min_agreement=min_agreement
            )
            result = ExportResult(
                path=target,
                architecture=arch_name,
                precision=precision,
                opset=used_opset,
                exporter=used_exporter,
                size_bytes=0,
                data=data.note,
                real_data=data.real,
                checks=checks,
                tolerance=_tolerance_text(precision, min_agreement),
                contrib_ops=contrib,
                int8_scheme=int8_scheme if precision == "int8" else None,
            )
            if "deeplense.task" in meta:  # a regressor: checked in dex, no detector
                result.regression = check_masses(
                    meta, precision, reference, onnx_logits, data.log10_mass
                )
            elif data.labels is not None:
                result.accuracy_torch = float((reference.argmax(1) == data.labels).mean())
                result.accuracy_onnx = float((onnx_logits.argmax(1) == data.labels).mean())
            if not data.real:
                result.notes.append("validated on synthetic images: " + data.note)
            failed = [c for c in checks if not c.passed]
            if failed:
                c = failed[0]
                raise DeepLenseError(
                    f"the {precision} ONNX model does not match PyTorch at batch {c.batch_size}: "
                    f"max abs error {c.max_abs_error:.3g}, max rel error {c.max_rel_error:.3g}, "
                    f"top class agrees on {c.argmax_agreement:.1%}{_judged_text(c)} (needed: "
                    f"{result.tolerance}); nothing was written"
                )
            # a regressor's detector: one mean, of its images (those that carry a mass)
            regressor = "deeplense.task" in meta
            _embed_detector(tmp, data, 1 if regressor else len(classes), meta, result, progress)
            validation: dict[str, Any] = {
                "data": data.note,
                "checks": [asdict(c) for c in checks],
                "accuracy_torch": result.accuracy_torch,
                "accuracy_onnx": result.accuracy_onnx,
            }
            if result.regression is not None:
                validation["regression"] = result.regression
            meta["deeplense.validation"] = json.dumps(validation)
            set_metadata(tmp, meta)
            shareable(tmp)
            result.size_bytes = tmp.stat().st_size
    return result


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
    precision: str = "fp32",
    checkpoint: str = "best",
    exporter: str = "auto",
    validation_images: int = 256,
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
    if not 7 <= int(opset) <= 23:
        raise DeepLenseError(f"opset {opset} is out of range; use 17 (default) to 23")
    if validation_images < 1:
        raise DeepLenseError("validation_images must be at least 1")
    int8_scheme_types(int8_scheme)  # fail before the model loads
    tta = check_tta(tta)
    if exporter not in EXPORTERS:
        raise DeepLenseError(f"unknown exporter {exporter!r}; use {', '.join(EXPORTERS)}")
    run = RunDir.open(run_path)
    regression_metadata(run, precision)  # a precision an axion-mass model cannot have
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
    reference = torch_logits(model, data.test)

    kinds = ("legacy", "dynamo") if exporter == "auto" else (exporter,)
    failures: list[str] = []
    for kind in kinds:
        try:
            result = _export_validated(
                kind,
                model,
                data,
                reference,
                target,
                run,
                arch_name,
                checkpoint,
                epoch,
                precision,
                opset,
                batch_sizes,
                min_agreement,
                standard_ops,
                int8_scheme,
                progress,
                tta,
            )
        except atomic.WriteError:
            raise  # full or read-only: the other exporter would fail the same way
        except DeepLenseError as exc:
            failures.append(f"{kind} exporter: {exc}")
            continue
        result.notes.extend(f"first attempt failed, {f}" for f in failures)
        result.seconds = time.perf_counter() - start
        add_artifacts(run.path, [target])  # to the run's tracker runs, if it was tracked
        return result
    raise DeepLenseError(
        "; ".join(failures) if len(failures) > 1 else failures[0].split(": ", 1)[1]
    )
