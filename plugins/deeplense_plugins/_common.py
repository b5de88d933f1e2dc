"""Helpers shared by the first-party architecture plugins.

Nothing here imports torch at module level: plugin modules are imported by
``deeplense --help`` and ``deeplense models``, which must stay fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from deeplense_cli import DeepLenseError

if TYPE_CHECKING:
    import torch.nn as nn

# Search spaces for the training settings every architecture shares; each plugin adds its
# own ``model.*`` entries and may narrow the learning-rate range.
BATCH_SIZES = [32, 64, 128]


def loguniform(low: float, high: float) -> dict[str, Any]:
    """A log-uniform search dimension in the plain-data ``tune_space`` format."""
    return {"type": "loguniform", "low": low, "high": high}


def choice(values: Iterable[Any]) -> dict[str, Any]:
    """A categorical search dimension in the plain-data ``tune_space`` format."""
    return {"type": "choice", "values": list(values)}


def training_space(lr: tuple[float, float]) -> dict[str, Any]:
    """The learning rate, weight decay and batch size dimensions of a ``tune_space``."""
    return {
        "lr": loguniform(*lr),
        "weight_decay": loguniform(1e-4, 1e-1),
        "batch_size": choice(BATCH_SIZES),
    }


def train_defaults(lr: float, batch_size: int = 64, weight_decay: float = 0.05) -> dict[str, Any]:
    """Per-architecture training defaults (AdamW, cosine schedule with warm-up elsewhere)."""
    return {"lr": lr, "batch_size": batch_size, "weight_decay": weight_decay, "warmup_epochs": 2}


def as_tuple(value: Any, name: str, length: int | None = None) -> tuple[Any, ...]:
    """Accept a tuple or a list (YAML/JSON configs give lists) for a per-stage setting."""
    if isinstance(value, list | tuple):
        result = tuple(as_tuple(v, name) if isinstance(v, list) else v for v in value)
    else:
        result = (value,) * (length or 1)
    if length is not None and len(result) != length:
        raise DeepLenseError(f"{name} needs {length} values (one per stage), got {list(result)}")
    return result


def fitting_size(image_size: int, fits: Callable[[int], bool], what: str, slack: int = 64) -> int:
    """The smallest square size >= ``image_size`` that ``fits`` accepts.

    Used to zero-pad images (losslessly) to a size a patch- or window-based model can
    split evenly, instead of resampling them.
    """
    for size in range(image_size, image_size + slack + 1):
        if fits(size):
            return size
    raise DeepLenseError(
        f"no input size between {image_size} and {image_size + slack} fits {what}; "
        "choose patch/window sizes that divide the image size"
    )


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution, pooling or unfold along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


@functools.cache
def _zero_pad_class() -> type:
    """The padding wrapper class, created once (on first use, so torch loads lazily)."""
    import torch.nn as nn
    import torch.nn.functional as F

    class ZeroPad(nn.Module):
        """Zero-pad (B, C, S, S) images symmetrically to the size the wrapped model needs."""

        def __init__(self, model: nn.Module, image_size: int, target: int) -> None:
            super().__init__()
            self.model = model
            before = (target - image_size) // 2
            after = target - image_size - before
            self.pads = (before, after, before, after)  # Python ints: a constant ONNX Pad
            self.target = target

        def forward(self, img: Any) -> Any:
            return self.model(F.pad(img, self.pads))

        def extra_repr(self) -> str:
            return f"pad={self.pads}, to={self.target}x{self.target}"

    ZeroPad.__module__ = __name__
    ZeroPad.__qualname__ = "ZeroPad"
    return ZeroPad


def pad_to(model: nn.Module, image_size: int, target: int) -> nn.Module:
    """Wrap ``model`` so it accepts ``image_size`` images by zero-padding them to ``target``.

    Padding is lossless (resampling is not); the wrapped model's weights live under
    ``model.`` in the state dict. Returns ``model`` unchanged when no padding is needed.
    """
    if target == image_size:
        return model
    wrapped: nn.Module = _zero_pad_class()(model, image_size, target)
    return wrapped


@functools.cache
def _fast_channel_norm(upstream: type) -> type:
    """A subclass of vit-pytorch's channel LayerNorm ``upstream`` with a faster forward."""
    import torch.nn.functional as F

    def forward(self: Any, x: Any) -> Any:
        # The same function as upstream's (biased variance over dim 1, then g and b), as one
        # fused layer_norm over the channels-last view instead of separate var and mean
        # reductions and five element-wise ops (BENCHMARKS.md, 'Training on the CPU').
        y = F.layer_norm(
            x.permute(0, 2, 3, 1), (x.shape[1],), self.g.view(-1), self.b.view(-1), self.eps
        )
        return y.permute(0, 3, 1, 2)

    # export_as: ONNX export uses upstream's ops, which ONNX Runtime runs faster at batch 64
    # (deeplense_cli.layers.export_forms; BENCHMARKS.md, 'Training on the CPU').
    return type(upstream.__name__, (upstream,), {"forward": forward, "export_as": upstream})


def fast_channel_norms(model: nn.Module, module: Any) -> int:
    """Give every ``module.LayerNorm`` (vit-pytorch's LayerNorm over the channels of a
    (B, C, H, W) map, in CvT, CrossFormer and TwinsSVT) the fused forward above. Parameters
    and state-dict keys are unchanged; returns how many were changed."""
    upstream = module.LayerNorm
    return swap_classes(model, {upstream: _fast_channel_norm(upstream)})


def swap_classes(model: nn.Module, mapping: dict[type, type]) -> int:
    """Give every module of ``model`` whose exact class is a key of ``mapping`` the class it
    maps to (a subclass or base with the same parameters: state-dict keys are unchanged);
    returns how many modules changed."""
    count = 0
    for m in model.modules():
        target = mapping.get(type(m))
        if target is not None:
            m.__class__ = target
            count += 1
    return count


def restore_channel_norms(model: nn.Module) -> int:
    """Undo :func:`fast_channel_norms` in place (upstream's forward back); returns how many."""
    count = 0
    for m in model.modules():
        cls = type(m)
        if cls.__module__ == __name__ and cls.__bases__ == (cls.__dict__.get("export_as"),):
            m.__class__ = cls.export_as
            count += 1
    return count


def __getattr__(name: str) -> Any:
    # ``deeplense_plugins._common.ZeroPad`` resolves lazily (e.g. for pickle) without
    # importing torch when the module is imported.
    if name == "ZeroPad":
        return _zero_pad_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
