"""The precisions an ONNX export can have, and the conversions from the fp32 file.

Precisions (benchmarks/bench_onnx.py; BENCHMARKS.md, 'ONNX Runtime versus PyTorch'):

* ``fp32`` -- the default; matches PyTorch to ~1e-6.
* ``fp16`` -- half the size, for GPUs (CUDA/TensorRT). On a CPU, ONNX Runtime casts back to
  fp32 around most operators, so it is SLOWER there (:func:`convert_fp16`).
* ``int8`` -- static QDQ quantisation, calibrated on training images: ~4x smaller, and on
  CPUs with VNNI (AVX512-VNNI / AVX-VNNI) much faster for the convolutional models; it
  changes predictions slightly, so the export reports the accuracy change on the test split
  (:func:`quantize_int8`). The default scheme (``u8s8-7bit``, 7-bit weights) computes the
  same integers on every x86 CPU: full 8-bit weights saturate ONNX Runtime's kernels on CPUs
  without VNNI (``INT8_SCHEMES``; benchmarks/bench_int8.py).

Light to import (numpy, onnx and ONNX Runtime load inside the conversions), so that what the
command line offers can be read from here without them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from deeplense_cli.core import atomic
from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.core.logs import silenced_output

if TYPE_CHECKING:
    import numpy as np

PRECISIONS: dict[str, str] = {
    "fp32": "full precision; the reference, runs everywhere",
    "fp16": "half the file size, for GPUs (CUDA/TensorRT); on a CPU it is slower than fp32",
    "int8": (
        "static int8 (QDQ, calibrated on training images): ~4x smaller; on CPUs with VNNI "
        "much faster for convolutional models (ResNet18), little or no gain for some "
        "transformers; predictions change slightly (accuracy change is reported)"
    ),
}
DEFAULT_PRECISION = "fp32"
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


def file_name(precision: str) -> str:
    """The file an export at ``precision`` writes in its run unless told: ``model.onnx`` for
    fp32, ``model-fp16.onnx``, ``model-int8.onnx``."""
    return "model.onnx" if precision == "fp32" else f"model-{precision}.onnx"


def int8_scheme_types(scheme: str) -> tuple[str, str, bool]:
    """``INT8_SCHEMES[scheme]``; an unknown scheme is a DeepLenseError."""
    if scheme not in INT8_SCHEMES:
        raise DeepLenseError(f"unknown int8 scheme {scheme!r}; use {', '.join(INT8_SCHEMES)}")
    return INT8_SCHEMES[scheme]


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

    with silenced_output():
        half = convert_float_to_float16(model, keep_io_types=True)
        # The converter appends the input/output casts at the end of the node list.
        wrapper = OnnxModel(half)
        wrapper.topological_sort()
    onnx.save(wrapper.model, os.fspath(dst))


class _Calibration:
    """A CalibrationDataReader over transformed training images, 16 at a time."""

    def __init__(self, images: np.ndarray, batch_size: int = 16) -> None:
        import numpy as np

        from deeplense_cli.deploy.onnx_session import INPUT_NAME

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

    from deeplense_cli.deploy import onnx_graph

    activations, weights, seven_bit = int8_scheme_types(scheme)
    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(calibration)
    src, dst = Path(src).resolve(), Path(dst).resolve()  # the block below changes directory
    pre = Path(workdir).resolve() / "preprocessed.onnx"
    # ORT's symbolic shape inference saves a debugging copy of the model into the current
    # directory when it cannot infer every shape: run it inside the temporary folder.
    with silenced_output(), contextlib.chdir(workdir):
        try:
            quant_pre_process(os.fspath(src), os.fspath(pre))
            source = pre
        except Exception:  # symbolic shape inference fails on some graphs; it is optional
            source = Path(src)
        model = onnx.load(os.fspath(source))
        if onnx_graph.unshare_vectors(model):
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
