"""The contract every registered architecture must meet, as a check plugin authors can run.

    from deeplense_cli.registry.contract import check_architecture
    check_architecture(MY_ARCH)              # every size in MY_ARCH.image_sizes
    check_architecture(MY_ARCH, [64])        # only 64x64

Each failure raises ``AssertionError`` naming the architecture, the image size and what
went wrong, so the helper works both inside pytest and in a plain script.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from deeplense_cli.registry.architecture import Architecture

if TYPE_CHECKING:
    import torch


def _fail(arch: Architecture, size: int, message: str) -> AssertionError:
    return AssertionError(f"{arch.name} at {size}x{size}: {message}")


def _build(arch: Architecture, size: int, num_classes: int, seed: int) -> torch.nn.Module:
    import torch

    torch.manual_seed(seed)
    try:
        model = arch.build(image_size=size, num_classes=num_classes, in_channels=1)
    except Exception as exc:
        raise _fail(arch, size, f"building with defaults failed: {exc!r}") from exc
    if not isinstance(model, torch.nn.Module):
        raise _fail(arch, size, f"factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _forward(
    arch: Architecture, size: int, model: torch.nn.Module, images: torch.Tensor, what: str
) -> torch.Tensor:
    try:
        out = model(images)
    except Exception as exc:
        raise _fail(arch, size, f"{what} failed on {tuple(images.shape)}: {exc!r}") from exc
    import torch

    if not isinstance(out, torch.Tensor):
        raise _fail(arch, size, f"{what} returned {type(out).__name__}, not one tensor")
    return out


def _check_size(arch: Architecture, size: int, batch_size: int, num_classes: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(1234)
    images = torch.rand(batch_size, 1, size, size, generator=generator)
    model = _build(arch, size, num_classes, seed=0)

    # training-mode forward: shape and finiteness
    model.train()
    out = _forward(arch, size, model, images, "training forward")
    if tuple(out.shape) != (batch_size, num_classes):
        raise _fail(
            arch, size, f"output shape {tuple(out.shape)}, expected {(batch_size, num_classes)}"
        )
    if not torch.isfinite(out).all():
        raise _fail(arch, size, "training forward produced NaN or infinite outputs")

    # one optimiser step must change the weights
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise _fail(arch, size, "the model has no trainable parameters")
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.01)
    optimizer.zero_grad()
    target = torch.arange(batch_size) % num_classes
    loss = torch.nn.functional.cross_entropy(out, target)
    loss.backward()
    if not all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
        raise _fail(arch, size, "backward produced NaN or infinite gradients")
    optimizer.step()
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True))
    if changed == 0:
        raise _fail(arch, size, "one SGD step changed no weights (no gradient reaches them)")

    # eval mode: deterministic, finite
    model.eval()
    with torch.no_grad():
        first = _forward(arch, size, model, images, "eval forward")
        second = _forward(arch, size, model, images, "second eval forward")
    if not torch.isfinite(first).all():
        raise _fail(arch, size, "eval forward produced NaN or infinite outputs")
    if not torch.equal(first, second):
        diff = (first - second).abs().max().item()
        raise _fail(
            arch,
            size,
            f"two eval-mode forward passes differ (max |diff| {diff:.3g}); "
            "something random (dropout, layer drop) is active in eval mode",
        )

    # the state dict round-trips into a freshly built model (built from another seed)
    fresh = _build(arch, size, num_classes, seed=1)
    try:
        fresh.load_state_dict(model.state_dict())
    except Exception as exc:
        raise _fail(arch, size, f"state_dict does not load into a fresh model: {exc}") from exc
    fresh.eval()
    with torch.no_grad():
        again = _forward(arch, size, fresh, images, "forward after state_dict load")
    if not torch.allclose(first, again, rtol=1e-5, atol=1e-6):
        diff = (first - again).abs().max().item()
        raise _fail(
            arch,
            size,
            f"a fresh model loaded with the state_dict gives different outputs (max |diff| "
            f"{diff:.3g}); some state is not in the state_dict (use register_buffer)",
        )


def check_architecture(
    arch: Architecture,
    image_sizes: Iterable[int] | None = None,
    batch_size: int = 2,
    num_classes: int = 3,
) -> None:
    """Check that ``arch`` meets the contract deeplense relies on; raise ``AssertionError``.

    For each image size (default: all of ``arch.image_sizes``) the model built with its
    defaults must: map a ``(batch_size, 1, S, S)`` batch to finite ``(batch_size,
    num_classes)`` logits; change its weights after one SGD step on a cross-entropy loss;
    give identical outputs for two eval-mode passes; and give the same outputs after its
    ``state_dict`` is loaded into a freshly built model. It must also build with
    ``num_classes=5`` and output 5 logits, and with ``num_classes=1`` (the one output of an
    axion-mass regressor, ``train --task axion-mass``) output one finite value per image.
    Seeds are fixed, so results are reproducible.

    :param arch: the architecture to check (registered or not).
    :param image_sizes: sizes to check; each must be in ``arch.image_sizes``.
    :param batch_size: images per test batch (>= 2, so batch statistics are exercised).
    :param num_classes: classes for the main checks.
    """
    import torch

    sizes = list(arch.image_sizes if image_sizes is None else image_sizes)
    assert sizes, f"{arch.name}: no image sizes to check"
    for size in sizes:
        assert size in arch.image_sizes, (
            f"{arch.name}: size {size} is not among its image_sizes {arch.image_sizes}"
        )
    assert batch_size >= 2, "batch_size must be at least 2"
    with torch.random.fork_rng(devices=[]):
        for size in sizes:
            _check_size(arch, size, batch_size, num_classes)
        size = sizes[0]
        model = _build(arch, size, 5, seed=0).eval()
        with torch.no_grad():
            out = _forward(arch, size, model, torch.rand(batch_size, 1, size, size), "forward")
        if tuple(out.shape) != (batch_size, 5):
            raise _fail(arch, size, f"with num_classes=5 the output shape is {tuple(out.shape)}")
        # a regressor (train --task axion-mass) is the same model with one output
        model = _build(arch, size, 1, seed=0).eval()
        with torch.no_grad():
            out = _forward(arch, size, model, torch.rand(batch_size, 1, size, size), "forward")
        if tuple(out.shape) != (batch_size, 1):
            raise _fail(
                arch,
                size,
                f"with num_classes=1 (a regressor's one output) the output shape is "
                f"{tuple(out.shape)}",
            )
        if not torch.isfinite(out).all():
            raise _fail(arch, size, "with num_classes=1 the outputs are NaN or infinite")


__all__ = ["check_architecture"]
