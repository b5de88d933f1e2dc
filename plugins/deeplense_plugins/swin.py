"""Swin transformer from timm, sized for 64 and 150 px one-channel images.

The reference project's Swin (patch 4, window 4, embed 50, depths (2, 2, 2, 3)) never learned
at AdamW 1e-3 without clipping; the configuration is kept close to it, with an embedding
width divisible by the heads and a lower learning rate.
"""

from __future__ import annotations

from typing import Any

import deeplense_cli
from deeplense_cli import Architecture, DeepLenseError
from deeplense_plugins._common import (
    as_tuple,
    choice,
    fitting_size,
    pad_to,
    train_defaults,
    training_space,
)


def build_swin(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    patch_size: int,
    window_size: int,
    embed_dim: int,
    depths: Any,
    num_heads: Any,
    mlp_ratio: float,
    drop_rate: float,
    drop_path_rate: float,
) -> Any:
    """timm's SwinTransformer at the native image size.

    timm pads feature maps to whole windows itself and shrinks windows larger than the
    map (64 px: 16, 8, 4, 2 tokens per side). Only the patch embedding needs a size
    divisible by the patch (timm would silently crop 150 to 148), so 150 is zero-padded
    to 152.
    """
    from timm.models.swin_transformer import SwinTransformer

    depth = as_tuple(depths, "depths")
    heads = as_tuple(num_heads, "num_heads", len(depth))
    for stage, h in enumerate(heads):
        width = embed_dim * 2**stage
        if width % h:
            raise DeepLenseError(
                f"Swin stage {stage + 1} width {width} is not divisible by its {h} heads; "
                "choose embed_dim divisible by num_heads"
            )
    target = fitting_size(image_size, lambda s: s % patch_size == 0, f"Swin patch {patch_size}")
    model = SwinTransformer(
        img_size=target,
        patch_size=patch_size,
        in_chans=in_channels,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depths=depth,
        num_heads=heads,
        window_size=window_size,
        mlp_ratio=mlp_ratio,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )
    return pad_to(model, image_size, target)


SWIN = Architecture(
    name="Swin",
    factory=build_swin,
    defaults={
        "patch_size": 4,
        "window_size": 4,
        "embed_dim": 48,
        "depths": (2, 2, 2, 3),
        "num_heads": (2, 2, 2, 2),
        "mlp_ratio": 2.0,
        "drop_rate": 0.0,
        "drop_path_rate": 0.1,
    },
    description="Swin transformer (timm): shifted-window attention, 4 stages, patch 4, window 4",
    train_defaults=train_defaults(2e-4),
    tune_space={
        **training_space((1e-5, 5e-4)),
        "model.embed_dim": choice([32, 48, 64]),
        "model.num_heads": choice([(2, 2, 2, 2), (2, 4, 8, 16)]),
        "model.mlp_ratio": choice([1.0, 2.0, 4.0]),
        "model.drop_path_rate": choice([0.0, 0.1, 0.2]),
    },
)


@deeplense_cli.hookimpl
def register_architectures(register: Any) -> None:
    register(SWIN)
