"""Export forms of vit-pytorch's self- and cross-attention layers (CrossViT, PiT, T2TViT's
ViT layers, CCT).

Upstream computes ``to_qkv(x).chunk(3)`` (or ``to_kv(...).chunk(2)``), rearranges each part
into heads, two einsums or matmuls around a Softmax, and rearranges back. Exported as is,
ONNX Runtime runs Slices whose bounds the TorchScript exporter computes from shapes at run
time, the head transposes, and the batched MatMuls (BENCHMARKS.md, 'Fused attention'). The
forms here compute the same function with the same parameters as one MatMul per projection
part and one fused ``MultiHeadAttention`` node
(:func:`deeplense_cli.layers.attention.multi_head_attention`).

Training and PyTorch inference keep upstream's forward: :func:`fused_attention_exports` gives
each layer a subclass whose only change is ``export_as``, the fused form, which
:func:`deeplense_cli.layers.export_forms.export_copy` swaps in on the copy it exports. State-dict
keys are unchanged. CaiT is left out: its talking-heads attention mixes the heads' scores
before and after the Softmax, which the fused node cannot express.

Imported only by the plugins' build functions, so torch may load at module level.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from deeplense_cli import multi_head_attention, split_projection
from deeplense_plugins._common import swap_classes


def _self_attention(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``vit.Attention`` / ``pit.Attention``: LayerNorm, q/k/v from one bias-free Linear."""
    x = self.norm(x)
    q, k, v = split_projection(x, self.to_qkv.weight, None, 3)
    out = multi_head_attention(q, k, v, self.heads, self.scale)
    return self.to_out(out)  # type: ignore[no-any-return]


def _cross_vit_attention(
    self: Any, x: torch.Tensor, context: torch.Tensor | None = None, kv_include_self: bool = False
) -> torch.Tensor:
    """``cross_vit.Attention``: q from x, keys and values from the context (x by default,
    or the class token followed by the other branch's patches)."""
    x = self.norm(x)
    context = x if context is None else context
    if kv_include_self:
        context = torch.cat((x, context), dim=1)
    k, v = split_projection(context, self.to_kv.weight, None, 2)
    out = multi_head_attention(self.to_q(x), k, v, self.heads, self.scale)
    return self.to_out(out)  # type: ignore[no-any-return]


def _cct_attention(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``cct.Attention``: no LayerNorm of its own, projection ``proj``."""
    q, k, v = split_projection(x, self.qkv.weight, None, 3)
    out = multi_head_attention(q, k, v, self.heads, self.scale)
    return self.proj_drop(self.proj(out))  # type: ignore[no-any-return]


# vit-pytorch module -> the fused forward of its ``Attention`` class
_FORMS: dict[str, Callable[..., torch.Tensor]] = {
    "vit": _self_attention,
    "pit": _self_attention,
    "cross_vit": _cross_vit_attention,
    "cct": _cct_attention,
}


@functools.cache
def _classes(family: str) -> tuple[type, type]:
    """(upstream's class, the subclass that trains as upstream and exports fused)."""
    import importlib

    upstream = importlib.import_module(f"vit_pytorch.{family}").Attention
    fused = type(f"Fused{upstream.__name__}", (upstream,), {"forward": _FORMS[family]})
    marked = type(upstream.__name__, (upstream,), {"export_as": fused})
    for cls in (fused, marked):
        cls.__module__ = __name__
        cls.__qualname__ = f"{family}_{cls.__name__}"
    return upstream, marked


def fused_attention_exports(model: nn.Module, *families: str) -> int:
    """Give every attention layer of ``model`` from the vit-pytorch modules ``families``
    (keys of ``_FORMS``) the fused export form; returns how many layers changed."""
    return swap_classes(model, dict(_classes(f) for f in families))
