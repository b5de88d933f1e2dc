"""The out-of-distribution detector inside an exported ONNX file.

An export gets a second output, ``ood_score`` (one float per image: the squared Mahalanobis
distance of the penultimate features and the input's ring statistics to the nearest class
mean, see :mod:`deeplense_cli.evaluation.ood`), computed by a few standard operators appended
to the graph (all named ``ood_*``), and its threshold in the metadata (``deeplense.ood``). Any ONNX consumer gets the score
with the logits, in the same run; the detector's statistics are fitted on what the file itself
computes (int8 and fp16 included).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.deploy.onnx_graph import STANDARD_DOMAINS
from deeplense_cli.deploy.onnx_session import INPUT_NAME, OOD_OUTPUT, import_ort, session_options
from deeplense_cli.evaluation.ood import LAPLACIAN, Detector, fit, ring_matrix

FEATURES = "deeplense_features"
VECTOR = "ood_vector"  # the penultimate features and the input's ring statistics
META_KEY = "deeplense.ood"
MIN_OPSET = 13  # Unsqueeze and ReduceSum take their axes as inputs from opset 13


def feature_tensor(model: Any, logits: str = "logits") -> str:
    """The name of the tensor the classifier head reads: the first input of the Gemm (or
    MatMul, before its bias Add) that produces the logits."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(logits)
    if node is not None and node.op_type == "Add":
        node = next(
            (
                producers[i]
                for i in node.input
                if i in producers and producers[i].op_type == "MatMul"
            ),
            None,
        )
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        raise DeepLenseError(
            "the model's logits do not come from a linear layer (Gemm/MatMul): "
            "no out-of-distribution detector"
        )
    return str(node.input[0])


def _reduce_mean(version: int, x: str, out: str, axis: str, axes: list[int]) -> Any:
    from onnx import helper

    if version >= 18:
        return helper.make_node("ReduceMean", [x, axis], [out], keepdims=1)
    return helper.make_node("ReduceMean", [x], [out], axes=axes, keepdims=1)


def detector_vector(model: Any) -> str:
    """Append (once) the nodes that compute what the detector scores: the penultimate
    features, then :func:`deeplense_cli.evaluation.ood.descriptor` of the input; returns the
    name of that ``(batch, D)`` float tensor."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    if any(VECTOR in n.output for n in g.node):
        return VECTOR
    version = opset(model)
    if version < MIN_OPSET:
        raise DeepLenseError(f"opset {version} < {MIN_OPSET}: no out-of-distribution detector")
    features = feature_tensor(model)
    dims = g.input[0].type.tensor_type.shape.dim
    size = int(dims[-1].dim_value)
    if size < 4 or int(dims[-2].dim_value) != size:
        raise DeepLenseError("the model's input is not a fixed square: no detector")
    half = size // 2
    x = g.input[0].name
    laplacian = LAPLACIAN.reshape(1, 1, 3, 3)
    g.initializer.extend(
        [
            numpy_helper.from_array(ring_matrix(size), "ood_rings"),
            numpy_helper.from_array(ring_matrix(half), "ood_rings_half"),
            numpy_helper.from_array(laplacian, "ood_laplacian"),
            numpy_helper.from_array(np.array([1], np.int64), "ood_axis1"),
            numpy_helper.from_array(np.array([2], np.int64), "ood_axis2"),
            numpy_helper.from_array(np.array([0, -1], np.int64), "ood_flat"),
        ]
    )
    pads = [1, 1, 1, 1]
    g.node.extend(
        [
            helper.make_node("Cast", [features], ["ood_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", [x], ["ood_x"], to=TensorProto.FLOAT),
            _reduce_mean(version, "ood_x", "ood_m", "ood_axis1", [1]),
            helper.make_node("Reshape", ["ood_m", "ood_flat"], ["ood_m_flat"]),
            helper.make_node("MatMul", ["ood_m_flat", "ood_rings"], ["ood_d0"]),
            helper.make_node("Conv", ["ood_m", "ood_laplacian"], ["ood_l1"], pads=pads),
            helper.make_node("Abs", ["ood_l1"], ["ood_l1_abs"]),
            helper.make_node("Reshape", ["ood_l1_abs", "ood_flat"], ["ood_l1_flat"]),
            helper.make_node("MatMul", ["ood_l1_flat", "ood_rings"], ["ood_d1"]),
            helper.make_node(
                "AveragePool", ["ood_m"], ["ood_h"], kernel_shape=[2, 2], strides=[2, 2]
            ),
            helper.make_node("Conv", ["ood_h", "ood_laplacian"], ["ood_l2"], pads=pads),
            helper.make_node("Abs", ["ood_l2"], ["ood_l2_abs"]),
            helper.make_node("Reshape", ["ood_l2_abs", "ood_flat"], ["ood_l2_flat"]),
            helper.make_node("MatMul", ["ood_l2_flat", "ood_rings_half"], ["ood_d2"]),
            helper.make_node("Concat", ["ood_f", "ood_d0", "ood_d1", "ood_d2"], [VECTOR], axis=1),
        ]
    )
    return VECTOR


def with_features(model: Any) -> Any:
    """A copy of ``model`` that also outputs what the detector scores (as float32)."""
    import onnx
    from onnx import TensorProto, helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    name = detector_vector(copy)
    copy.graph.node.append(helper.make_node("Identity", [name], [FEATURES]))
    copy.graph.output.append(
        helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", None])
    )
    return copy


def opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), default=0)


def append_detector(model: Any, detector: Detector) -> None:
    """Add the ``ood_score`` output to ``model`` (in place) and record the detector."""
    from onnx import TensorProto, helper, numpy_helper

    version = opset(model)
    source = detector_vector(model)
    factor = detector.factor.astype(np.float32)
    centres = (detector.means.astype(np.float64) @ detector.factor).astype(np.float32)
    g = model.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(factor, "ood_factor"),
            numpy_helper.from_array(centres, "ood_centres"),
        ]
    )
    nodes = [
        helper.make_node("MatMul", [source, "ood_factor"], ["ood_z"]),
        helper.make_node("Unsqueeze", ["ood_z", "ood_axis1"], ["ood_z3"]),
        helper.make_node("Sub", ["ood_z3", "ood_centres"], ["ood_diff"]),
        helper.make_node("Mul", ["ood_diff", "ood_diff"], ["ood_sq"]),
        helper.make_node("ReduceSum", ["ood_sq", "ood_axis2"], ["ood_d"], keepdims=0),
    ]
    if version >= 18:
        nodes.append(
            helper.make_node("ReduceMin", ["ood_d", "ood_axis1"], [OOD_OUTPUT], keepdims=0)
        )
    else:
        nodes.append(helper.make_node("ReduceMin", ["ood_d"], [OOD_OUTPUT], axes=[1], keepdims=0))
    g.node.extend(nodes)
    g.output.append(helper.make_tensor_value_info(OOD_OUTPUT, TensorProto.FLOAT, ["batch"]))
    set_meta(model, META_KEY, json.dumps(detector.summary()))


def set_meta(model: Any, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def strip_detector(model: Any) -> Any:
    """``model`` (in place) without a detector it may carry: a file is fitted anew."""
    g = model.graph

    def ours(name: str) -> bool:
        return name.startswith("ood_") or name == OOD_OUTPUT

    kept_nodes = [n for n in g.node if not any(ours(o) for o in n.output)]
    kept_outputs = [o for o in g.output if not ours(o.name)]
    kept_inits = [t for t in g.initializer if not ours(t.name)]
    kept_props = [p for p in model.metadata_props if p.key != META_KEY]
    for field, kept in (
        (g.node, kept_nodes),
        (g.output, kept_outputs),
        (g.initializer, kept_inits),
        (model.metadata_props, kept_props),
    ):
        del field[:]
        field.extend(kept)
    return model


def features_of(path: str | os.PathLike[str], x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The penultimate features ONNX Runtime computes for a transformed batch ``x``."""
    import onnx

    ort = import_ort()
    model = with_features(strip_detector(onnx.load(os.fspath(path))))
    session = ort.InferenceSession(
        model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )
    parts = []
    for i in range(0, len(x), batch_size):
        chunk = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
        parts.append(session.run([FEATURES], {INPUT_NAME: chunk})[0])
    return np.concatenate(parts).reshape(len(x), -1)


def embed_detector(
    path: str | os.PathLike[str],
    fit_x: np.ndarray,
    fit_labels: np.ndarray,
    num_classes: int,
    calibration_x: np.ndarray,
    info: dict[str, Any],
) -> Detector:
    """Fit the detector on what the model file at ``path`` computes for ``fit_x``, calibrate
    it on ``calibration_x`` (held back), and write it into the file (in place)."""
    import onnx

    # one session for both sets: building it (graph surgery, optimisation) costs seconds
    features = features_of(path, np.concatenate([fit_x, calibration_x]))
    fitted, held = features[: len(fit_x)], features[len(fit_x) :]
    detector = fit(fitted, fit_labels, num_classes, held, info)
    model = strip_detector(onnx.load(os.fspath(path)))
    append_detector(model, detector)
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))
    return detector
