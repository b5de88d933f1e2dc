"""Graph rewrites applied to exported models before they are validated and saved.

ONNX Runtime's CPU ``Einsum`` kernel is generic (it permutes its inputs and loops over
small matrix products) and took a large share of the attention models' time
(``benchmarks/bench_onnx.py --profile``; BENCHMARKS.md, 'Export graph rewrites'). Every
two-operand einsum the built-in architectures use is a batched matrix product, possibly
with permuted axes, so it is rewritten here into ``Transpose``/``Reshape``/``MatMul`` nodes,
which ONNX Runtime runs with its GEMM kernels and fuses further (``MatMul`` + ``Transpose``
-> ``FusedMatMul``).

Einsums of any other shape (ellipses, one operand, repeated letters, several contracted
letters) are left as they are.

The exact GELU ``x * 0.5 * (1 + erf(x / sqrt 2))`` reaches the graph as
``Div -> Erf -> Add -> Mul(0.5) -> Mul(x)`` from the dynamo exporter (CrossFormer's and
TwinsSVT's channels-last stages), an order ONNX Runtime's Gelu fusion does not match: it
wants ``Mul(x, 0.5)`` on the side. :func:`reorder_gelu` moves the 0.5 there (the same
arithmetic), and ONNX Runtime then fuses each GELU with the bias Add before it into one
``BiasGelu`` kernel.

:func:`unshare_vectors` runs before int8 quantisation only: it works around a naming clash
in ONNX Runtime's quantizer (see there).

Every rewrite is checked like every export: ONNX Runtime against PyTorch on real images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

STANDARD_DOMAINS = ("", "ai.onnx")  # the standard ONNX operator domains


@dataclass(frozen=True)
class _Equation:
    a: str
    b: str
    out: str

    @classmethod
    def parse(cls, text: str) -> _Equation | None:
        text = text.replace(" ", "")
        if "..." in text or "->" not in text:
            return None
        inputs, out = text.split("->")
        parts = inputs.split(",")
        if len(parts) != 2:
            return None
        a, b = parts
        for term in (a, b, out):
            if not term.isalpha() or len(set(term)) != len(term):
                return None
        if set(out) - set(a) - set(b):
            return None
        return cls(a, b, out)


def _perm(src: str, dst: str) -> list[int]:
    return [src.index(c) for c in dst]


class _Builder:
    """Appends nodes and initializers with fresh names derived from one einsum node."""

    def __init__(self, graph: Any, stem: str) -> None:
        self.graph = graph
        self.stem = stem
        self.nodes: list[Any] = []
        self.count = 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.stem}/einsum_{what}_{self.count}"

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def transpose(self, value: str, perm: list[int], output: str | None = None) -> str:
        if perm == sorted(perm) and output is None:
            return value
        if perm == sorted(perm):
            return self.node("Identity", [value], output)
        return self.node("Transpose", [value], output, perm=perm)

    def const(self, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name("const")
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name


def _initializer(graph: Any, name: str) -> Any | None:
    for init in graph.initializer:
        if init.name == name:
            return init
    return None


def _bmm(node: Any, eq: _Equation, b: _Builder) -> bool:
    """``batch + one free + one contracted`` on each side: a (batched) MatMul."""
    batch = [c for c in eq.a if c in eq.b and c in eq.out]
    contracted = [c for c in eq.a if c in eq.b and c not in eq.out]
    left = [c for c in eq.a if c not in eq.b]
    right = [c for c in eq.b if c not in eq.a]
    if len(contracted) != 1 or len(left) != 1 or len(right) != 1:
        return False
    if set(eq.out) != set(batch + left + right):  # a free letter summed away
        return False
    a_order = "".join(batch + left + contracted)
    b_order = "".join(batch + contracted + right)
    product = "".join(batch + left + right)
    x = b.transpose(node.input[0], _perm(eq.a, a_order))
    y = b.transpose(node.input[1], _perm(eq.b, b_order))
    if product == eq.out:
        b.node("MatMul", [x, y], node.output[0])
    else:
        z = b.node("MatMul", [x, y])
        b.transpose(z, _perm(product, eq.out), node.output[0])
    return True


def _mix(node: Any, eq: _Equation, b: _Builder) -> bool:
    """A 2-D weight mixing one axis of an N-D tensor in place, e.g. CaiT's talking heads
    ``b h i j, h g -> b g i j``: ``MatMul(W^T, A viewed as [.., h, i*j])``, no transposes."""
    if len(eq.b) != 2 or len(eq.a) < 2:
        return False
    contracted = [c for c in eq.b if c in eq.a and c not in eq.out]
    right = [c for c in eq.b if c not in eq.a]
    if len(contracted) != 1 or len(right) != 1:
        return False
    c, r = contracted[0], right[0]
    p = eq.a.index(c)
    if eq.out != eq.a[:p] + r + eq.a[p + 1 :]:
        return False
    weight = _initializer(b.graph, node.input[1])
    if weight is None:
        return False
    from onnx import numpy_helper

    w = numpy_helper.to_array(weight)
    if eq.b != c + r:  # stored as [r, c] already
        w = w.T
    wt = b.const(np.ascontiguousarray(w.T))  # [r, c]
    shape_a = b.node("Shape", [node.input[0]])
    # [.., c, rest] (a trailing 1 when c is the last axis); 0 copies a dimension
    view = b.node("Reshape", [node.input[0], b.const(np.array([0] * (p + 1) + [-1], np.int64))])
    mixed = b.node("MatMul", [wt, view])
    if w.shape[0] == w.shape[1]:
        out_shape = shape_a
    else:
        head = b.node(
            "Slice",
            [shape_a, b.const(np.array([0], np.int64)), b.const(np.array([p], np.int64))],
        )
        tail = b.node(
            "Slice",
            [
                shape_a,
                b.const(np.array([p + 1], np.int64)),
                b.const(np.array([len(eq.a)], np.int64)),
            ],
        )
        out_shape = b.node(
            "Concat", [head, b.const(np.array([w.shape[1]], np.int64)), tail], axis=0
        )
    b.node("Reshape", [mixed, out_shape], node.output[0])
    return True


def rewrite_einsum(model: Any) -> int:
    """Rewrite the two-operand einsums of ``model`` (an ``onnx.ModelProto``, changed in
    place) into MatMul form; returns how many were rewritten."""
    graph = model.graph
    new_nodes: list[Any] = []
    rewritten = 0
    replaced_inputs: set[str] = set()
    for index, node in enumerate(graph.node):
        if node.op_type != "Einsum" or node.domain not in STANDARD_DOMAINS:
            new_nodes.append(node)
            continue
        equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
        eq = _Equation.parse(equation)
        builder = _Builder(graph, node.name or f"einsum{index}")
        if eq is not None and (_bmm(node, eq, builder) or _mix(node, eq, builder)):
            new_nodes.extend(builder.nodes)
            replaced_inputs.update(node.input)
            rewritten += 1
        else:
            new_nodes.append(node)
    if rewritten:
        del graph.node[:]
        graph.node.extend(new_nodes)
        _drop_unused_initializers(graph, replaced_inputs)
    return rewritten


def _drop_unused_initializers(graph: Any, candidates: set[str]) -> None:
    """Weights only the rewritten einsums read (their transposed copies replace them)."""
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used or i.name not in candidates]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _constant(graph: Any, name: str, value: float) -> bool:
    init = _initializer(graph, name)
    if init is None:
        return False
    from onnx import numpy_helper

    array = numpy_helper.to_array(init)
    return array.size == 1 and bool(np.isclose(float(array.reshape(-1)[0]), value, rtol=1e-6))


def reorder_gelu(model: Any) -> int:
    """Rewrite each ``Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(0.5) -> Mul(x)`` of ``model``
    (an ``onnx.ModelProto``, changed in place) into ``Mul(x, 0.5) * (Erf(...) + 1)``, the
    order ONNX Runtime fuses into one Gelu; returns how many were rewritten."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only_reader(value: str, op: str) -> Any | None:
        found = readers.get(value, [])
        if value in outputs or len(found) != 1 or found[0].op_type != op:
            return None
        return found[0]

    count = 0
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not _constant(graph, div.input[1], np.sqrt(2)):
            continue
        if only_reader(div.output[0], "Erf") is None:
            continue
        x = div.input[0]
        add = only_reader(erf.output[0], "Add")
        if add is None or not any(
            _constant(graph, i, 1.0) for i in add.input if i != erf.output[0]
        ):
            continue
        half = only_reader(add.output[0], "Mul")
        if half is None:
            continue
        (half_const,) = [i for i in half.input if i != add.output[0]] or [""]
        if not _constant(graph, half_const, 0.5):
            continue
        final = only_reader(half.output[0], "Mul")
        if final is None or x not in final.input:
            continue
        # half: x * 0.5 (x is computed before the Div, so the node order stays valid);
        # final: (x * 0.5) * (erf + 1)
        half.input[:] = [x, half_const]
        final.input[:] = [half.output[0], add.output[0]]
        count += 1
    return count


def unshare_vectors(model: Any) -> int:
    """Give every node that reads a shared 1-D initializer (a bias, a norm's gain) its own
    copy; ``model`` (an ``onnx.ModelProto``) is changed in place. Returns the copies made.

    ONNX Runtime's QDQ quantizer copies a bias that several nodes share, naming the copy
    ``<name><n>`` while checking only initializer names for clashes: TwinsSVT's exported
    LayerNorm gains ``view_1``/``view_2`` (shared by the LayerNorms of one stage) got copies
    named ``view_274``..., names of activations in the same graph, and quantization failed
    ("Quantization parameter shared mode is not supported for weight yet"). Copies made here
    get names no tensor of the graph has, so the quantizer never needs to copy.
    """
    graph = model.graph
    vectors = {i.name: i for i in graph.initializer if len(i.dims) == 1}
    taken = {i.name for i in graph.initializer} | {v.name for v in graph.input}
    taken |= {o for node in graph.node for o in node.output}
    seen: set[str] = set()
    copies = 0
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name not in vectors:
                continue
            if name not in seen:  # the first reader keeps the original
                seen.add(name)
                continue
            copies += 1
            new_name = f"{name}__copy{copies}"
            while new_name in taken:
                new_name += "_"
            copy = type(vectors[name])()
            copy.CopyFrom(vectors[name])
            copy.name = new_name
            graph.initializer.append(copy)
            taken.add(new_name)
            node.input[k] = new_name
    return copies
