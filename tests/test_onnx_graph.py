"""The export-time graph rewrites: einsum -> MatMul and the GELU reorder (onnx_graph),
nn.Unfold -> convolution (export_modules) compute exactly what they replace; the unsharing
of shared 1-D initializers before int8 gives every reader a fresh name; fused attention
(export_modules.multi_head_attention) exports as one node ONNX Runtime runs to the same
numbers."""

from __future__ import annotations

import numpy as np
import pytest

from deeplense_cli.deploy.onnx_graph import rewrite_einsum

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

    from deeplense_cli.layers.export_forms import UnfoldAsConv, export_copy

    unfold = nn.Unfold(kernel_size=kernel, stride=stride, padding=padding)
    x = torch.randn(3, channels, size, size)
    assert torch.equal(UnfoldAsConv(unfold)(x), unfold(x))
    model = nn.Sequential(nn.Identity(), nn.Sequential(unfold))
    clone, replaced = export_copy(model)
    assert replaced == 1 and isinstance(clone[1][0], UnfoldAsConv)
    assert isinstance(model[1][0], nn.Unfold), "the original model must not change"
    assert export_copy(nn.Linear(2, 2))[1] == 0


def _gelu_graph(half_first: bool, x_first: bool, half: float = 0.5):
    """MatMul + bias, then the exact GELU in the dynamo exporter's order (0.5 applied to
    erf + 1, then x), the operand orders of the two Muls as given."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    consts = {
        "w": rng.standard_normal((4, 6)).astype(np.float32),
        "bias": rng.standard_normal(6).astype(np.float32),
        "sqrt2": np.array(np.sqrt(2), np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(half, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["x"]),
        helper.make_node("Div", ["x", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["p"]),
        helper.make_node("Mul", ["half", "p"] if half_first else ["p", "half"], ["h"]),
        helper.make_node("Mul", ["x", "h"] if x_first else ["h", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 6])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, consts


@pytest.mark.parametrize("half_first", [True, False])
@pytest.mark.parametrize("x_first", [True, False])
def test_gelu_reorder_is_exact_and_onnx_runtime_fuses_it(
    half_first: bool, x_first: bool, tmp_path
) -> None:
    import math

    import onnx
    import onnxruntime as ort

    from deeplense_cli.deploy.onnx_graph import reorder_gelu
    from deeplense_cli.deploy.onnx_session import session_options

    model, c = _gelu_graph(half_first, x_first)
    a = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    before = _run(model, {"a": a})

    def fused_ops(m) -> list[str]:
        path = tmp_path / "optimized.onnx"
        ort.InferenceSession(
            m.SerializeToString(),
            session_options(1, optimized_model_path=path),
            providers=["CPUExecutionProvider"],
        )
        return [n.op_type for n in onnx.load(str(path)).graph.node]

    assert "Erf" in fused_ops(model)  # ONNX Runtime leaves this order unfused
    assert reorder_gelu(model) == 1
    onnx.checker.check_model(model)
    after = _run(model, {"a": a})
    x = a @ c["w"] + c["bias"]
    exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(after, exact, rtol=1e-5, atol=1e-5)
    ops = fused_ops(model)
    assert "Erf" not in ops and ops.count("BiasGelu") + ops.count("Gelu") == 1, ops
    assert reorder_gelu(model) == 0  # nothing left to rewrite


def test_gelu_reorder_leaves_other_arithmetic_alone() -> None:
    from deeplense_cli.deploy.onnx_graph import reorder_gelu

    model, _ = _gelu_graph(True, True, half=0.7)  # not a GELU
    assert reorder_gelu(model) == 0


def test_unshare_vectors_gives_each_reader_a_fresh_name() -> None:
    import onnx
    from onnx import TensorProto, helper

    from deeplense_cli.deploy.onnx_graph import unshare_vectors

    gain = helper.make_tensor("g", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    nodes = [
        helper.make_node("Mul", ["x", "g"], ["g1"]),  # an activation named like a copy
        helper.make_node("Mul", ["g1", "g"], ["y"]),
        helper.make_node("Add", ["y", "g"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
        [gain],
    )
    model = helper.make_model(graph)
    assert unshare_vectors(model) == 2
    readers = [n.input[1] for n in model.graph.node]
    names = [o for n in model.graph.node for o in n.output]
    assert readers[0] == "g" and len(set(readers)) == 3 and not set(readers) & set(names)
    values = {i.name: list(onnx.numpy_helper.to_array(i)) for i in model.graph.initializer}
    assert all(values[r] == [1.0, 2.0, 3.0, 4.0] for r in readers)
    onnx.checker.check_model(model)
    assert unshare_vectors(model) == 0


def _export_module(module, x, path) -> list[str]:
    import onnx
    import torch

    with torch.no_grad():
        torch.onnx.export(
            module,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    return [
        f"{n.domain}.{n.op_type}" if n.domain else n.op_type
        for n in onnx.load(str(path)).graph.node
    ]


@pytest.mark.parametrize("bias_rank", [0, 3, 4])
def test_multi_head_attention_exports_as_one_fused_node_that_matches(bias_rank, tmp_path) -> None:
    """Plain ops in PyTorch (equal to torch's own attention), ONE com.microsoft
    MultiHeadAttention node in the export (no Softmax, no Slices of the projection), which
    ONNX Runtime runs to the same numbers at batch 1 and 5, with keys and values from a
    different sequence than the queries, and an additive bias broadcast over the batch."""
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F
    from torch import nn

    from deeplense_cli.layers.attention import (
        multi_head_attention,
        split_projection,
        unfused_attention,
    )

    class Cross(nn.Module):  # queries from 7 tokens, keys/values from 5 of them
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(24, 24)
            self.kv = nn.Linear(24, 48)
            shape = {3: (4, 7, 5), 4: (1, 4, 7, 5)}.get(bias_rank)
            self.bias = nn.Parameter(torch.randn(shape)) if shape else None

        def forward(self, x):
            k, v = split_projection(x[:, 2:], self.kv.weight, self.kv.bias, 2)
            return multi_head_attention(self.q(x), k, v, 4, 0.35, self.bias)

    torch.manual_seed(0)
    model = Cross().eval()
    x = torch.randn(3, 7, 24)
    with torch.no_grad():
        out = model(x)
        k, v = model.kv(x[:, 2:]).chunk(2, dim=-1)

        def heads(t):
            return t.reshape(3, -1, 4, 6).transpose(1, 2)

        mask = model.bias if model.bias is not None else None
        expected = F.scaled_dot_product_attention(
            heads(model.q(x)), heads(k), heads(v), attn_mask=mask, scale=0.35
        )
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(3, 7, 24))
    ops = _export_module(model, x, tmp_path / "fused.onnx")
    assert ops.count("com.microsoft.MultiHeadAttention") == 1, ops
    # one Slice: the context x[:, 2:]; the key/value split is two MatMuls, not Slices
    assert "Softmax" not in ops and ops.count("Slice") == 1 and ops.count("MatMul") == 3, ops
    session = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        xb = torch.randn(batch, 7, 24)
        with torch.no_grad():
            reference = model(xb).numpy()
        got = session.run(None, {"x": xb.numpy()})[0]
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)
    with unfused_attention():  # standard operators only
        plain = _export_module(model, x, tmp_path / "plain.onnx")
    assert "Softmax" in plain and not any(op.startswith("com.microsoft") for op in plain)
    assert "com.microsoft.MultiHeadAttention" in _export_module(model, x, tmp_path / "again.onnx")
