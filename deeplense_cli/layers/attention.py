"""Attention that is plain tensor ops in PyTorch and one fused node in an ONNX export.

:func:`multi_head_attention` is multi-head scaled dot-product attention that is plain tensor
ops in PyTorch (training, eager inference) and ONE ``com.microsoft`` ``MultiHeadAttention``
node in an ONNX export: ONNX Runtime's fused kernel instead of the reshapes, head transposes,
two batched MatMuls and the Softmax the exporter would write (BENCHMARKS.md, 'Fused
attention'). The first-party plugins' export forms of vit-pytorch's
attention layers use it, and so can a third-party plugin's; the node is an ONNX Runtime
contrib op, which is what ``deeplense predict`` runs. :func:`split_projection` is a fused
q/k/v projection that exports as one MatMul per part.

Plugins import these from the package's top level (``from deeplense_cli import
multi_head_attention``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    scale: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`multi_head_attention` as plain tensor ops always, exports included (for
    layers where the fused node does not pay, such as attention in small windows)."""
    b, n, c = q.shape
    m = k.shape[1]
    qh = q.reshape(b, n, heads, c // heads).transpose(1, 2) * scale
    kh = k.reshape(b, m, heads, c // heads).transpose(1, 2)
    vh = v.reshape(b, m, heads, v.shape[-1] // heads).transpose(1, 2)
    sim = qh @ kh.transpose(-1, -2)
    if bias is not None:
        sim = sim + bias
    out = sim.softmax(dim=-1) @ vh
    return out.transpose(1, 2).reshape(b, n, -1)


class _FusedAttention(torch.autograd.Function):
    """The reference computation in PyTorch; one MultiHeadAttention node when traced for
    ONNX (the TorchScript exporter calls ``symbolic``)."""

    @staticmethod
    def forward(
        ctx: object,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None,
        heads: int,
        scale: float,
    ) -> torch.Tensor:
        return attention(q, k, v, heads, scale, bias)

    @staticmethod
    def symbolic(g: Any, q: Any, k: Any, v: Any, bias: Any, heads: int, scale: float) -> Any:
        inputs = [q, k, v]
        if bias is not None and not (hasattr(bias, "node") and bias.node().mustBeNone()):
            # inputs 3 (projection bias) and 4 (key padding mask) left out, 5 attention_bias
            # broadcast over the batch (B or 1, heads, N, M)
            empty = []
            for _ in range(2):
                placeholder = g.op("prim::Constant")
                placeholder.setType(torch._C.OptionalType.ofTensor())
                empty.append(placeholder)
            inputs += [*empty, bias]
        out = g.op("com.microsoft::MultiHeadAttention", *inputs, num_heads_i=heads, scale_f=scale)
        out.setType(q.type())  # (B, N, heads * D) like the query: values have its head size
        return out


_fuse = True


def exporting() -> bool:
    """True while the TorchScript ONNX exporter traces the model (and fusing is on)."""
    return bool(_fuse and torch.jit.is_tracing() and torch.onnx.is_in_onnx_export())


@contextlib.contextmanager
def unfused_attention() -> Iterator[None]:
    """Export :func:`multi_head_attention` and :func:`split_projection` as plain ops inside
    this block (for measuring what the fused forms buy)."""
    global _fuse
    saved, _fuse = _fuse, False
    try:
        yield
    finally:
        _fuse = saved


def split_projection(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, parts: int
) -> tuple[torch.Tensor, ...]:
    """``F.linear(x, weight, bias).chunk(parts, dim=-1)`` (a fused q/k/v projection).

    One matrix product in PyTorch. While exporting, one MatMul per part with its rows of
    ``weight`` (constants in the graph): the TorchScript exporter computes a chunk's bounds
    from the product's shape at run time, and ONNX Runtime cannot fold those Slices away (the
    batch axis is dynamic).
    """
    if not exporting():
        return F.linear(x, weight, bias).chunk(parts, dim=-1)
    weights = weight.chunk(parts, dim=0)
    biases = bias.chunk(parts) if bias is not None else (None,) * parts
    return tuple(F.linear(x, w, b) for w, b in zip(weights, biases, strict=True))


def multi_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    scale: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(scale * q k^T + bias) v`` per head, heads side by side in the channels.

    ``q`` is (B, N, heads * D), ``k`` and ``v`` (B, M, heads * D); ``bias`` (optional) is
    added to the scaled scores and has shape (1, heads, N, M) or (B, heads, N, M); returns
    (B, N, heads * D). Channel ``h * D + d`` is head h's d-th (einops' ``(h d)`` order).
    Plain differentiable tensor ops in PyTorch; while the TorchScript ONNX exporter traces
    it, one ``com.microsoft::MultiHeadAttention`` node (see the module docstring).
    """
    if exporting():
        if bias is not None and bias.dim() == 3:
            bias = bias.unsqueeze(0)
        out: torch.Tensor = _FusedAttention.apply(q, k, v, bias, int(heads), float(scale))
        return out
    return attention(q, k, v, heads, scale, bias)
