"""Augmentation by the symmetries of the data (the groups are named in training.config); the
file formats users save images in are :func:`deeplense_cli.data.degrade.degrade`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.training.defaults import AUGMENT_GROUPS

if TYPE_CHECKING:
    import torch


def augment_group(setting: Any) -> str:
    """The group name a ``train.augment`` setting means (true: dihedral, false: none)."""
    if setting is True:
        return "dihedral"
    if setting is False or setting is None:
        return "none"
    return str(setting)


def augment(
    x: torch.Tensor,
    rng: np.random.Generator,
    group: str = "dihedral",
    rows: np.ndarray | None = None,
    total: int | None = None,
) -> torch.Tensor:
    """Apply one transform of ``AUGMENT_GROUPS[group]`` to each image (in place of x).

    ``rows``: x holds only these positions of a batch of ``total`` images (one rank's share
    under distributed training); the draws are made for the whole batch, so each image gets
    the transform it would get in one process."""
    import torch

    members = np.asarray(AUGMENT_GROUPS[group])
    choice = members[rng.integers(0, len(members), size=x.shape[0] if rows is None else total)]
    if rows is not None:
        choice = choice[rows]
    out = torch.empty_like(x)
    for t in range(8):
        sel = np.flatnonzero(choice == t)
        if len(sel) == 0:
            continue
        idx = torch.from_numpy(sel)
        part = x[idx]
        if t >= 4:
            part = part.flip(-1)
        out[idx] = torch.rot90(part, t % 4, dims=(-2, -1))
    return out
