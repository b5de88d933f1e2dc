"""ResNet-18 from torchvision with a one-channel stem: the convolutional baseline."""

from __future__ import annotations

from typing import Any

import deeplense_cli
from deeplense_cli import Architecture, DeepLenseError
from deeplense_plugins._common import choice, train_defaults, training_space

STEMS = ("small", "standard")
# Global pooling takes any size: the native 64 and 150 px and the published centre crops.
CONV_IMAGE_SIZES = (50, 64, 100, 150)


def build_resnet18(
    *, image_size: int, num_classes: int, in_channels: int, stem: str, dropout: float
) -> Any:
    """torchvision ResNet-18 (random init) with its first convolution taking ``in_channels``.

    ``stem="standard"``: ImageNet stem (7x7 stride-2 conv + max-pool, /4), 2x2 final map at
    64 px. ``stem="small"``: 3x3 stride-1 conv, no max-pool (the CIFAR variant), keeping
    16x the spatial resolution in the residual stages at 16x the compute.
    """
    import torch.nn as nn
    from torchvision.models import resnet18

    if stem not in STEMS:
        raise DeepLenseError(f"ResNet18 stem must be one of {', '.join(STEMS)}, got {stem!r}")
    model = resnet18(weights=None, num_classes=num_classes)
    if stem == "small":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    # always a Sequential, so the state-dict keys do not depend on the dropout value
    model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


RESNET18 = Architecture(
    name="ResNet18",
    factory=build_resnet18,
    defaults={"stem": "standard", "dropout": 0.0},
    description="ResNet-18 (torchvision) with a one-channel stem; the convolutional baseline",
    image_sizes=CONV_IMAGE_SIZES,
    train_defaults=train_defaults(1e-3, weight_decay=1e-4),
    tune_space={
        **training_space((1e-4, 3e-3)),
        "model.stem": choice(STEMS),
        "model.dropout": choice([0.0, 0.2]),
    },
)


@deeplense_cli.hookimpl
def register_architectures(register: Any) -> None:
    register(RESNET18)
