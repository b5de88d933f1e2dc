"""The export-time graph rewrites: einsum -> MatMul (onnx_graph) and nn.Unfold ->
convolution (export_modules) compute exactly what they replace."""

from __future__ import annotations

import numpy as np
import pytest

from deeplense_cli.onnx_graph import rewrite_einsum

# (equation, shape of A, shape of B, B is a stored weight)
CASES = [
    ("b h i d, b h j d -> b h i j", (2, 3, 5, 4), (2, 3, 7, 4), False),  # attention scores
    ("b h i j, b h j d -> b h i d", (2, 3, 5, 7), (2, 3, 7, 4), False),  # attention x values
    ("b i d, b j d -> b i j", (3, 5, 4), (3, 6, 4), False),
    ("bij,bjd->bdi", (2, 5, 7), (2, 7, 3), False),  # output needs a transpose
    ("b h i j, h g -> b g i j", (2, 4, 5, 5), (4, 4), True),  # CaiT talking heads
    ("b h i j, h g -> b g i j", (2, 4, 5, 6), (4, 3), True),  # non-square mixing
    ("b h i j, g h -> b g i j", (2, 4, 5, 6), (3, 4), True),  # weight stored [g, h]
    ("bij,jk->bik", (2, 5, 4), (4, 3), True),  # mixed axis last
]


def _graph(equation: str, shape_a: tuple[int, ...], shape_b: tuple[int, ...], weight: bool):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = rng.standard_normal(shape_b).astype(np.float32)
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", *shape_a[1:]])]
    inits = []
    if weight:
        inits.append(numpy_helper.from_array(b, "b"))
    else:
        inputs.append(
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", *shape_b[1:]])
        )
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation, name="e")
    rank = len(equation.replace(" ", "").split("->")[1])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(rank)])
    graph = helper.make_graph([node], "g", inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, b


def _run(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


@pytest.mark.parametrize(("equation", "shape_a", "shape_b", "weight"), CASES)
def test_einsum_rewrite_matches_numpy(equation, shape_a, shape_b, weight) -> None:
    import onnx

    model, b = _graph(equation, shape_a, shape_b, weight)
    a = np.random.default_rng(1).standard_normal(shape_a).astype(np.float32)
    feeds = {"a": a} if weight else {"a": a, "b": b}
    expected = np.einsum(equation.replace(" ", ""), a, b)
    assert rewrite_einsum(model) == 1
    onnx.checker.check_model(model)
    assert "Einsum" not in [n.op_type for n in model.graph.node]
    used = {name for node in model.graph.node for name in node.input}
    assert all(init.name in used for init in model.graph.initializer), "unused weights left"
    np.testing.assert_allclose(_run(model, feeds), expected, rtol=1e-5, atol=1e-5)
    # the batch axis stays dynamic
    a3 = np.random.default_rng(2).standard_normal((3, *shape_a[1:])).astype(np.float32)
    b3 = b if weight else np.concatenate([b, b, b])[:3]
    feeds = {"a": a3} if weight else {"a": a3, "b": b3}
    np.testing.assert_allclose(
        _run(model, feeds), np.einsum(equation.replace(" ", ""), a3, b3), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("equation", "shape_a", "shape_b", "weight"),
    [
        ("b n, b n d -> b d", (2, 5), (2, 5, 3), False),  # no free axis on the left
        ("b i j, b j k -> b i", (2, 3, 4), (2, 4, 5), False),  # k summed away
        ("b h i j, h g -> b g i j", (2, 4, 5, 5), (4, 4), False),  # mixing weight not stored
    ],
)
def test_other_einsums_are_left_alone(equation, shape_a, shape_b, weight) -> None:
    model, _ = _graph(equation, shape_a, shape_b, weight)
    before = model.SerializeToString()
    assert rewrite_einsum(model) == 0
    assert model.SerializeToString() == before


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "channels", "size"),
    [(7, 4, 2, 1, 64), (3, 2, 1, 64, 16), (8, 4, 0, 1, 64), (3, 2, 1, 5, 15), (2, 1, 0, 3, 9)],
)
def test_unfold_as_convolution_is_exact(kernel, stride, padding, channels, size) -> None:
    import torch
    from torch import nn

    from deeplense_cli.export_modules import UnfoldAsConv, export_copy

    unfold = nn.Unfold(kernel_size=kernel, stride=stride, padding=padding)
    x = torch.randn(3, channels, size, size)
    assert torch.equal(UnfoldAsConv(unfold)(x), unfold(x))
    model = nn.Sequential(nn.Identity(), nn.Sequential(unfold))
    clone, replaced = export_copy(model)
    assert replaced == 1 and isinstance(clone[1][0], UnfoldAsConv)
    assert isinstance(model[1][0], nn.Unfold), "the original model must not change"
    assert export_copy(nn.Linear(2, 2))[1] == 0
