"""Architectures: what a plugin registers, and the registry built from the hooks."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deeplense_cli.core.errors import DeepLenseError

if TYPE_CHECKING:
    import torch.nn as nn

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class Architecture:
    """A model architecture, registered as a factory.

    :param name: display name (``CCT``); command-line lookup is case-insensitive.
    :param factory: ``factory(image_size=..., num_classes=..., in_channels=..., **hparams)``
        returning a ``torch.nn.Module`` mapping ``(B, in_channels, S, S)`` to ``(B, num_classes)``.
    :param defaults: default hyper-parameters passed to the factory (overridable).
    :param description: one line for ``deeplense models``.
    :param image_sizes: the square input sizes the model accepts at native resolution.
    :param train_defaults: training defaults that suit this architecture (``lr``,
        ``batch_size``, ``weight_decay``, ``warmup_epochs``...), overriding the global ones.
    :param tune_space: search space for ``deeplense tune`` (see ``deeplense_cli.tune``).
    :param renamed_params: ``{old name: current name}`` for renamed hyper-parameters: configs
        written before a rename (saved runs, config files) keep working.
    """

    name: str
    factory: Callable[..., nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    image_sizes: tuple[int, ...] = (64, 150)
    train_defaults: Mapping[str, Any] = field(default_factory=dict)
    tune_space: Mapping[str, Any] = field(default_factory=dict)
    renamed_params: Mapping[str, str] = field(default_factory=dict)
    plugin: str = ""  # filled in by the registry: the plugin that registered it

    def param_name(self, key: str) -> str:
        """The current name of hyper-parameter ``key`` (itself unless it was renamed)."""
        return self.renamed_params.get(key, key)

    def canonical_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with renamed hyper-parameters under their current names."""
        out: dict[str, Any] = {}
        given_as: dict[str, str] = {}  # current name -> the key that set it first
        for key, value in params.items():
            name = self.param_name(key)
            if name in out and out[name] != value:
                old = key if key != name else given_as[name]
                raise DeepLenseError(
                    f"{self.name}: {old!r} is the old name of {name!r} and both are set "
                    f"({key!r} to {value!r}, {given_as[name]!r} to {out[name]!r}); "
                    f"keep only {name!r}"
                )
            out[name] = value
            given_as.setdefault(name, key)
        return out

    def build(
        self,
        image_size: int = 64,
        num_classes: int = 3,
        in_channels: int = 1,
        **overrides: Any,
    ) -> nn.Module:
        """Build the model with the defaults updated by ``overrides``."""
        overrides = self.canonical_params(overrides)
        if image_size not in self.image_sizes:
            sizes = ", ".join(str(s) for s in self.image_sizes)
            raise DeepLenseError(
                f"{self.name} does not support {image_size}x{image_size} images "
                f"(supported: {sizes}); choose another architecture or resize the data"
            )
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise DeepLenseError(
                f"unknown hyper-parameter(s) for {self.name}: {', '.join(sorted(unknown))} "
                f"(known: {known})"
            )
        params = {**self.defaults, **overrides}
        return self.factory(
            image_size=image_size, num_classes=num_classes, in_channels=in_channels, **params
        )


def validate(arch: Any) -> Architecture:
    """Check a registration; raise ``ValueError`` saying what is wrong."""
    if not isinstance(arch, Architecture):
        raise ValueError(f"expected an Architecture, got {type(arch).__name__}")
    if not isinstance(arch.name, str) or not _NAME.match(arch.name):
        raise ValueError(f"invalid architecture name {arch.name!r}")
    if not callable(arch.factory):
        raise ValueError(f"{arch.name}: factory is not callable")
    if not arch.image_sizes or not all(isinstance(s, int) and s > 0 for s in arch.image_sizes):
        raise ValueError(f"{arch.name}: image_sizes must be positive integers")
    return arch
