"""An example deeplense plugin registering one architecture, ``TinyCNN``, and one experiment
tracker, ``wandb`` (Weights & Biases, in :mod:`deeplense_example_plugin.wandb_logger`).

Copy this package to start your own. Keep this module cheap to import: deeplense imports
every plugin for ``deeplense models`` and ``deeplense --help``, so torch is imported inside
the factory, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import deeplense_cli
from deeplense_cli import Architecture
from deeplense_example_plugin.wandb_logger import WandbLogger

if TYPE_CHECKING:
    import torch.nn as nn

__version__ = "0.1.0"


def build_tiny_cnn(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    width: int = 16,
    blocks: int = 3,
    dropout: float = 0.0,
) -> nn.Module:
    """A few conv-BN-ReLU-pool blocks, global average pooling and a linear head.

    Global pooling makes it work at any image size, so ``image_size`` is not needed here.
    """
    import torch.nn as nn

    layers: list[nn.Module] = []
    channels = in_channels
    for i in range(blocks):
        out = width * 2**i
        layers += [
            nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        channels = out
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(channels, num_classes),
    ]
    return nn.Sequential(*layers)


TINY_CNN = Architecture(
    name="TinyCNN",
    factory=build_tiny_cnn,
    defaults={"width": 16, "blocks": 3, "dropout": 0.0},
    description="Example plugin: a tiny CNN (conv blocks + global average pooling)",
    image_sizes=(64, 150),
    train_defaults={"lr": 1e-3, "batch_size": 64, "weight_decay": 1e-4, "warmup_epochs": 1},
    tune_space={
        "lr": {"type": "loguniform", "low": 1e-4, "high": 3e-3},
        "batch_size": {"type": "choice", "values": [32, 64, 128]},
        "model.width": {"type": "choice", "values": [8, 16, 32]},
        "model.blocks": {"type": "choice", "values": [2, 3, 4]},
        "model.dropout": {"type": "choice", "values": [0.0, 0.2]},
    },
)


@deeplense_cli.hookimpl
def register_architectures(register: Any) -> None:
    """Called by deeplense whenever it lists or looks up architectures."""
    register(TINY_CNN)


@deeplense_cli.hookimpl
def register_loggers(register: Any) -> None:
    """``--log wandb``. deeplense imports ``requires`` before a run starts, so a missing
    library is one line with ``install`` instead of a failed run."""
    register(
        "wandb",
        WandbLogger,
        requires=["wandb"],
        install="pip install 'deeplense-example-plugin[wandb]'",
    )
