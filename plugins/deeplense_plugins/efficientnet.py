"""EfficientNet-B0/B1/B2 from timm with a one-channel stem, trained from scratch.

The best published DeepLense figures came from EfficientNets; here they start from random
weights (nothing is downloaded) and take the images at their native size.
"""

from __future__ import annotations

from typing import Any

import deeplense_cli
from deeplense_cli import Architecture, DeepLenseError
from deeplense_plugins._common import choice, train_defaults, training_space
from deeplense_plugins.resnet import CONV_IMAGE_SIZES

VARIANTS = {"EfficientNet-B0": "efficientnet_b0", "EfficientNet-B1": "efficientnet_b1",
            "EfficientNet-B2": "efficientnet_b2"}  # fmt: skip


def _factory(timm_name: str) -> Any:
    def build(
        *,
        image_size: int,
        num_classes: int,
        in_channels: int,
        drop_rate: float,
        drop_path_rate: float,
    ) -> Any:
        """timm's EfficientNet (random init) for ``in_channels`` inputs of any size: its
        global pooling makes the classifier independent of ``image_size``."""
        import timm

        for name, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
            if not 0 <= float(value) < 1:
                raise DeepLenseError(f"{name} must be in [0, 1), got {value!r}")
        return timm.create_model(
            timm_name,
            pretrained=False,
            in_chans=in_channels,
            num_classes=num_classes,
            drop_rate=float(drop_rate),
            drop_path_rate=float(drop_path_rate),
        )

    return build


def _architecture(name: str, timm_name: str) -> Architecture:
    return Architecture(
        name=name,
        factory=_factory(timm_name),
        defaults={"drop_rate": 0.2, "drop_path_rate": 0.1},
        description=f"{name} (timm {timm_name}) with a one-channel stem, trained from scratch",
        image_sizes=CONV_IMAGE_SIZES,
        train_defaults=train_defaults(1e-3, weight_decay=0.05),
        tune_space={
            **training_space((2e-4, 4e-3)),
            "model.drop_rate": choice([0.0, 0.2, 0.3]),
            "model.drop_path_rate": choice([0.0, 0.1, 0.2]),
        },
    )


EFFICIENTNETS = [_architecture(name, timm_name) for name, timm_name in VARIANTS.items()]


@deeplense_cli.hookimpl
def register_architectures(register: Any) -> None:
    for arch in EFFICIENTNETS:
        register(arch)
