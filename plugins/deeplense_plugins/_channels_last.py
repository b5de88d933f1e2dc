"""Channels-last forms of vit-pytorch's CrossFormer, TwinsSVT and CvT transformer stages.

Upstream computes these stages on (B, C, H, W) maps: 1x1 convolutions for every projection,
a LayerNorm over dim 1 (two transposes around each, or slow reductions), and einops
rearranges into and out of attention windows. ONNX Runtime runs each 1x1 convolution in its
blocked NCHWc layout, so the exported graph also reorders the map into and out of that layout
around every projection, which made both models slower under ONNX Runtime than in PyTorch at
batch 64 (BENCHMARKS.md, 'Channels-last transformer stages').

The forms here compute the same function with the same parameters on (B, H, W, C) tokens:
one transpose into that layout at the start of a stage and one out at its end, matrix
products for the projections (the convolutions' own weights viewed as matrices), LayerNorm
over the last axis, and one reshape + transpose into and out of the windows per attention.
They are the models' forward for training and export alike (state-dict keys unchanged, so
older checkpoints load), except CvT's, which trains in this form (its depth-wise convolutions
run on the (B, C, H, W) view of channels-last memory) but exports in upstream's
(``export_as``, see :mod:`deeplense_cli.layers.export_forms`): ONNX Runtime runs upstream's
faster at batch 64. ``benchmarks/bench_cpu_kernels.py`` and ``bench_onnx.py --variants``
measure them against upstream's.

Imported only by the plugins' build functions, so torch may load at module level.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deeplense_cli import attention
from deeplense_plugins._common import swap_classes


def norm_last(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """vit-pytorch's channel LayerNorm (``g``, ``b``, ``eps``; biased variance) on (..., C)."""
    return F.layer_norm(x, (x.shape[-1],), norm.g.reshape(-1), norm.b.reshape(-1), norm.eps)


def pointwise(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1, stride-1, ungrouped ``nn.Conv2d`` on (..., C) tokens: a MatMul."""
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (1, 1) or conv.groups != 1:
        raise TypeError(f"not a pointwise convolution: {conv}")
    if conv.stride != (1, 1) or conv.padding != (0, 0):
        raise TypeError(f"not a pointwise convolution: {conv}")
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def patchwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A k x k, stride-k, unpadded ``nn.Conv2d`` on (B, H, W, C): each output position's
    k x k patch as one row, times the kernel as a matrix; returns (B, H // k, W // k, C')."""
    k = conv.kernel_size[0]
    if conv.kernel_size != (k, k) or conv.stride != (k, k) or conv.padding != (0, 0):
        raise TypeError(f"not a patch convolution: {conv}")
    if conv.groups != 1 or conv.dilation != (1, 1):
        raise TypeError(f"not a patch convolution: {conv}")
    if k == 1:
        return pointwise(conv, x)
    b, h, w, c = x.shape
    hk, wk = h // k, w // k
    x = x[:, : hk * k, : wk * k]  # a convolution drops what its stride does not cover
    x = x.reshape(b, hk, k, wk, k, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hk, wk, k * k * c)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, k * k * c)
    return F.linear(x, weight, conv.bias)


def sequence(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A feed-forward ``nn.Sequential`` of channel LayerNorms, pointwise convolutions,
    element-wise activations and dropouts, on (..., C) tokens."""
    for m in seq:
        if isinstance(m, nn.Conv2d):
            x = pointwise(m, x)
        elif hasattr(m, "g") and hasattr(m, "b"):
            x = norm_last(m, x)
        elif isinstance(m, nn.GELU | nn.ReLU | nn.SiLU | nn.Dropout | nn.Identity):
            x = m(x)
        else:
            raise TypeError(f"no channels-last form for {type(m).__name__}")
    return x


def to_windows(x: torch.Tensor, window: int, dilated: bool) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window * window, C): adjacent ``window`` x ``window``
    blocks, or (``dilated``) the ``window`` x ``window`` grid of positions that lie H // window
    apart (CrossFormer's long-distance attention); row-major inside a window, windows ordered
    batch, row, column (upstream's einops orders)."""
    b, h, w, c = x.shape
    if dilated:
        x = x.reshape(b, window, h // window, window, w // window, c).permute(0, 2, 4, 1, 3, 5)
    else:
        x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def from_windows(x: torch.Tensor, shape: torch.Size, window: int, dilated: bool) -> torch.Tensor:
    """The inverse of :func:`to_windows` for a (B, H, W, C') result."""
    b, h, w, _ = shape
    c = x.shape[-1]
    x = x.reshape(b, h // window, w // window, window, window, c)
    x = x.permute(0, 3, 1, 4, 2, 5) if dilated else x.permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def map_attention(attn: Any, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Attention of a (B, H, W, heads * D) query map over a (B, H', W', 2 * heads * D) map
    of keys then values (``attn.heads``, ``attn.scale``), through ``attn.to_out``: the
    un-windowed attention of TwinsSVT's global and CvT's layers; returns (B, H, W, C)."""
    b, h, w, _ = q.shape
    k, v = kv.flatten(1, 2).chunk(2, dim=-1)
    out = sequence(attn.to_out, attention(q.reshape(b, h * w, -1), k, v, attn.heads, attn.scale))
    return out.reshape(b, h, w, -1)


# ---- CrossFormer ----------------------------------------------------------------------


def crossformer_attention(attn: Any, x: torch.Tensor) -> torch.Tensor:
    """vit-pytorch ``crossformer.Attention`` on (B, H, W, C)."""
    window, heads, dilated = attn.window_size, attn.heads, attn.attn_type == "long"
    shape = x.shape
    tokens = to_windows(norm_last(attn.norm, x), window, dilated)
    q, k, v = pointwise(attn.to_qkv, tokens).chunk(3, dim=-1)
    # the dynamic position bias, as upstream computes it (a constant of the weights, which
    # ONNX Runtime folds when it loads the model)
    pos = torch.arange(-window, window + 1, device=x.device)
    grid = torch.stack(torch.meshgrid(pos, pos, indexing="ij")).reshape(2, -1).t()
    bias = attn.dpb(grid.float())[attn.rel_pos_indices]
    out = pointwise(attn.to_out, attention(q, k, v, heads, attn.scale, bias))
    return from_windows(out, shape, window, dilated)


# ---- TwinsSVT -------------------------------------------------------------------------


def twins_local_attention(attn: Any, x: torch.Tensor) -> torch.Tensor:
    """vit-pytorch ``twins_svt.LocalAttention`` on (B, H, W, C)."""
    shape, window = x.shape, attn.patch_size
    tokens = to_windows(norm_last(attn.norm, x), window, dilated=False)
    k, v = pointwise(attn.to_kv, tokens).chunk(2, dim=-1)
    out = sequence(
        attn.to_out, attention(pointwise(attn.to_q, tokens), k, v, attn.heads, attn.scale)
    )
    return from_windows(out, shape, window, dilated=False)


def twins_global_attention(attn: Any, x: torch.Tensor) -> torch.Tensor:
    """vit-pytorch ``twins_svt.GlobalAttention`` on (B, H, W, C): every position attends
    to keys and values of the map sub-sampled by a k x k, stride-k convolution."""
    x = norm_last(attn.norm, x)
    return map_attention(attn, pointwise(attn.to_q, x), patchwise(attn.to_kv, x))


# ---- CvT ------------------------------------------------------------------------------


def cvt_projection(proj: Any, x: torch.Tensor) -> torch.Tensor:
    """vit-pytorch ``cvt.DepthWiseConv2d`` (depth-wise conv, BatchNorm, pointwise conv) on
    (B, H, W, C): the depth-wise convolution and BatchNorm run on the (B, C, H, W) view of the
    channels-last memory (no copy), the pointwise one as a matrix product."""
    depthwise, norm, point = proj.net
    y = norm(depthwise(x.permute(0, 3, 1, 2)))
    return pointwise(point, y.permute(0, 2, 3, 1))


def cvt_attention(attn: Any, x: torch.Tensor) -> torch.Tensor:
    """vit-pytorch ``cvt.Attention`` on (B, H, W, C)."""
    x = norm_last(attn.norm, x)
    return map_attention(attn, cvt_projection(attn.to_q, x), cvt_projection(attn.to_kv, x))


def _residual_fn(layer: nn.Module) -> nn.Module | None:
    """The wrapped module of a vit-pytorch ``Residual``; None for ``nn.Identity``."""
    return None if isinstance(layer, nn.Identity) else layer.fn  # type: ignore[return-value]


@functools.cache
def forms() -> dict[str, tuple[type, type]]:
    """{"crossformer" | "cvt" | "twins_svt": (upstream Transformer, its channels-last form)}."""
    from vit_pytorch import crossformer, cvt, twins_svt

    class CvTTransformer(cvt.Transformer):  # type: ignore[misc]
        # exported in upstream's form: in ONNX Runtime the transposes around its depth-wise
        # convolutions cost more at batch 64 than this form saves (see the module docstring)
        export_as = cvt.Transformer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 2, 3, 1)
            for attn, ff in self.layers:
                x = cvt_attention(attn, x) + x
                x = sequence(ff.net, x) + x
            return x.permute(0, 3, 1, 2)

    class CrossFormerTransformer(crossformer.Transformer):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 2, 3, 1)
            for short_attn, short_ff, long_attn, long_ff in self.layers:
                x = crossformer_attention(short_attn, x) + x
                x = sequence(short_ff, x) + x
                x = crossformer_attention(long_attn, x) + x
                x = sequence(long_ff, x) + x
            return x.permute(0, 3, 1, 2)

    class TwinsTransformer(twins_svt.Transformer):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 2, 3, 1)
            for local_attn, ff1, global_attn, ff2 in self.layers:
                if (fn := _residual_fn(local_attn)) is not None:
                    x = twins_local_attention(fn, x) + x
                if (fn := _residual_fn(ff1)) is not None:
                    x = sequence(fn.net, x) + x
                x = twins_global_attention(global_attn.fn, x) + x
                x = sequence(ff2.fn.net, x) + x
            return x.permute(0, 3, 1, 2)

    table = {
        "crossformer": (crossformer.Transformer, CrossFormerTransformer),
        "cvt": (cvt.Transformer, CvTTransformer),
        "twins_svt": (twins_svt.Transformer, TwinsTransformer),
    }
    for family, (_, form) in table.items():
        form.__module__ = __name__
        form.__qualname__ = form.__name__ = f"ChannelsLast_{family}_Transformer"
    return table


def channels_last_stages(model: nn.Module, family: str) -> int:
    """Give every upstream Transformer stage of ``model`` (``family`` "crossformer", "cvt"
    or "twins_svt") its channels-last forward; parameters and state-dict keys are unchanged.
    Returns how many stages changed."""
    upstream, form = forms()[family]
    return swap_classes(model, {upstream: form})


def upstream_stages(model: nn.Module) -> int:
    """Undo :func:`channels_last_stages` in place (for measuring what it buys)."""
    return swap_classes(model, {form: upstream for upstream, form in forms().values()})
