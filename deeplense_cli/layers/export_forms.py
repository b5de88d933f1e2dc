"""Export-time stand-ins for PyTorch modules that ONNX Runtime runs slowly.

``nn.Unfold`` (T2TViT's soft split, PiT's patch embedding) exports as dozens of
index ``Gather`` nodes; the same result is a depth-wise convolution with one-hot kernels,
which ONNX Runtime runs with its convolution kernels. The stand-in is exact (each output is
one input value times 1 plus zeros) and only ever used on a copy of the model being
exported; the export is validated against the original model as always.

A module class can also name its own export form: a class attribute ``export_as`` (a class
taking the same attributes and parameters) is swapped in on the copy. The first-party
plugins use it for vit-pytorch's channel LayerNorm, whose fused ``layer_norm`` form trains
faster in PyTorch but runs slower in ONNX Runtime at batch 64 (the transposes around it),
and for the attention layers' fused form (:mod:`deeplense_cli.layers.attention`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if len(v) == 1:
        return (int(v[0]), int(v[0]))
    return (int(v[0]), int(v[1]))


class UnfoldAsConv(nn.Module):
    """``nn.Unfold`` as a grouped convolution: output channel ``c * kh * kw + i * kw + j``
    copies input channel ``c`` at kernel offset ``(i, j)``, the order ``nn.Unfold`` uses."""

    def __init__(self, unfold: nn.Unfold) -> None:
        super().__init__()
        self.kernel = _pair(unfold.kernel_size)
        self.dilation = _pair(unfold.dilation)
        self.padding = _pair(unfold.padding)
        self.stride = _pair(unfold.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = int(x.shape[1])
        kh, kw = self.kernel
        eye = torch.eye(kh * kw, dtype=x.dtype, device=x.device).reshape(kh * kw, 1, kh, kw)
        weight = eye.repeat(channels, 1, 1, 1)
        out = F.conv2d(
            x,
            weight,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=channels,
        )
        return out.flatten(2)


def _export_as(module: nn.Module) -> type | None:
    target = getattr(type(module), "export_as", None)
    return target if isinstance(target, type) and target is not type(module) else None


def export_copy(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with the stand-ins swapped in; returns (copy, modules replaced).
    The model itself is returned unchanged when there is nothing to replace."""
    if not any(isinstance(m, nn.Unfold) or _export_as(m) for m in model.modules()):
        return model, 0
    clone = copy.deepcopy(model)
    replaced = 0
    for m in clone.modules():
        target = _export_as(m)
        if target is not None:
            m.__class__ = target
            replaced += 1
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Unfold):
                setattr(parent, name, UnfoldAsConv(child))
                replaced += 1
    return clone, replaced
