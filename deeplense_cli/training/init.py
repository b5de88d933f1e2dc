"""Starting a run from trained weights (``train --init SOURCE``): fine-tuning.

SOURCE is a shipped model's name (its ``.safetensors`` weights), a run directory (its best
checkpoint) or a checkpoint file inside a run (``RUN/checkpoints/last.pt``). The new run takes
the source's architecture, hyper-parameters and input transform (crop and standardisation)
unless they are given; the classifier head is kept when the data's class names are the
source's (or some of them, in any order: each keeps its row) and rebuilt, at random, when a
class is new. Loading never runs code:
safetensors holds tensors only and checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.registry.pretrained import shipped_models
from deeplense_cli.runs import CHECKPOINTS
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.runs.task import head_names

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class InitSource:
    """Where a run's starting weights come from, and what they were trained as."""

    spec: str  # as given
    kind: str  # "shipped", "run" or "checkpoint"
    architecture: str
    params: dict[str, Any]
    classes: list[str]  # what its outputs are: classes, or a regressor's one target
    transform: dict[str, Any]
    path: Path  # the weights file or checkpoint
    checkpoint: str = "best"
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What the new run keeps about its start (``init.json``)."""
        return {
            "source": self.spec,
            "kind": self.kind,
            "path": str(self.path.resolve()),
            "architecture": self.architecture,
            "classes": self.classes,
            **self.extra,
        }


def find_source(spec: str | os.PathLike[str]) -> InitSource:
    """``spec`` as an :class:`InitSource` (reads only small records: no torch)."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        raise DeepLenseError("train.init is empty; give a shipped model, a run or a checkpoint")
    path = Path(spec)
    # A path is kept absolute: Ray trials and SLURM jobs start in other folders.
    if path.is_dir():
        return _from_run(str(path.resolve()), RunDir.open(path), "best", "run")
    if path.is_file():
        if path.suffix != ".pt" or path.parent.name != "checkpoints":
            raise DeepLenseError(
                f"--init {spec}: a file must be a run's checkpoint (RUN/checkpoints/best.pt "
                "or last.pt); or give a run directory or a shipped model's name"
            )
        if path.stem not in CHECKPOINTS:
            names = " or ".join(f"{name}.pt" for name in CHECKPOINTS)
            raise DeepLenseError(f"--init {spec}: the checkpoint must be {names}")
        return _from_run(
            str(path.resolve()), RunDir.open(path.parent.parent), path.stem, "checkpoint"
        )
    shipped = shipped_models()
    model = shipped.get(str(spec).lower())
    if model is None:
        names = ", ".join(m.name for m in shipped.values()) or "none"
        raise DeepLenseError(
            f"--init {spec}: neither a run directory, a checkpoint nor a shipped model "
            f"(shipped: {names})"
        )
    if model.weights_path is None:
        raise DeepLenseError(
            f"--init {spec}: the shipped model {model.name} has no PyTorch weights "
            f"({model.path.with_suffix('.safetensors').name}); reinstall deeplense"
        )
    card = model.card
    config = card.get("config") or {}
    transform = _onnx_transform(model.path)
    return InitSource(
        spec=str(spec),
        kind="shipped",
        architecture=str(card["architecture"]),
        params=dict((config.get("model") or {}).get("params") or {}),
        classes=head_names(config, list(card["classes"])),
        transform=transform,
        path=model.weights_path,
        extra={"shipped_model": model.name, "sha256": (card.get("weights") or {}).get("sha256")},
    )


def _from_run(spec: str, run: RunDir, checkpoint: str, kind: str) -> InitSource:
    config = run.read_config()
    path = run.checkpoint_path(checkpoint)
    if not path.is_file():
        raise DeepLenseError(
            f"--init {spec}: {path} does not exist; has that run finished an epoch?"
        )
    return InitSource(
        spec=spec,
        kind=kind,
        architecture=str(config["model"]["name"]),
        params=dict(config["model"].get("params") or {}),
        classes=head_names(config, run.classes),
        transform=run.transform,
        path=path,
        checkpoint=checkpoint,
    )


def _onnx_transform(path: Path) -> dict[str, Any]:
    """The transform a shipped model's ONNX file carries (read with onnx, not a session)."""
    import json

    import onnx

    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        return dict(json.loads(meta["deeplense.transform"]))
    except Exception as exc:
        raise DeepLenseError(
            f"cannot read {path}: {first_line(exc)}; reinstall deeplense"
        ) from None


def load_state(source: InitSource) -> dict[str, torch.Tensor]:
    """The source's weights as a state dict, loaded without running any code."""
    if source.kind == "shipped":
        from safetensors.torch import load_file

        try:
            return dict(load_file(os.fspath(source.path)))
        except Exception as exc:
            raise DeepLenseError(
                f"cannot read {source.path}: {first_line(exc)}; reinstall deeplense"
            ) from None
    run = RunDir(source.path.parent.parent)
    return dict(run.load_checkpoint(source.checkpoint)["model"])


def head_keys(model: torch.nn.Module, num_classes: int) -> list[str]:
    """The state-dict keys of the classifier head: the last Linear layer with one output per
    class (how every built-in architecture and timm/torchvision model ends)."""
    import torch

    found = ""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == num_classes:
            found = name
    if not found:
        return []
    prefix = f"{found}."
    return [k for k in model.state_dict() if k.startswith(prefix)]


def apply_init(
    model: torch.nn.Module, source: InitSource, classes: list[str], freeze: str = "none"
) -> list[str]:
    """Load the source's weights into ``model`` (built for ``classes``); returns what the run
    should say about it. With ``freeze="backbone"`` only the head keeps gradients."""
    state = load_state(source)
    own = model.state_dict()
    head = head_keys(model, len(classes))
    notes = []
    if list(classes) == list(source.classes):
        keep = dict(state)
    elif set(classes) <= set(source.classes) and len(set(classes)) == len(classes) and head:
        # the same classes, reordered or fewer: keep each class's own row of the head
        order = [source.classes.index(c) for c in classes]
        keep = dict(state)
        for key in head:
            keep[key] = state[key][order]
        notes.append(
            f"classifier head kept for the data's classes {', '.join(classes)} "
            f"(of {source.spec}'s {', '.join(source.classes)})"
        )
    else:
        keep = {k: v for k, v in state.items() if k not in head}
        notes.append(
            f"classifier head rebuilt for {len(classes)} classes ({', '.join(classes)}); "
            f"{source.spec} was trained on {', '.join(source.classes)}"
        )
    wrong = [k for k, v in keep.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in keep and k not in head]
    unexpected = [k for k in keep if k not in own]
    if wrong or missing or unexpected:
        first = (wrong or missing or unexpected)[0]
        raise DeepLenseError(
            f"--init {source.spec}: its weights do not fit this {source.architecture} "
            f"({len(wrong)} of another shape, {len(missing)} missing, {len(unexpected)} "
            f"unknown; first: {first}); keep the source's model hyper-parameters"
        )
    model.load_state_dict(keep, strict=False)
    if freeze == "backbone":
        apply_freeze(model, len(classes))
        notes.append("backbone frozen: only the classifier head trains")
    return notes


def apply_freeze(model: torch.nn.Module, num_classes: int) -> None:
    """Only the classifier head keeps gradients (``train.freeze=backbone``)."""
    head = set(head_keys(model, num_classes))
    if not head:
        raise DeepLenseError(
            f"train.freeze=backbone: no classifier head (a Linear layer with {num_classes} "
            "outputs) found in this model"
        )
    for name, param in model.named_parameters():
        param.requires_grad_(name in head)


def freeze_backbone_modes(model: torch.nn.Module, num_classes: int) -> None:
    """After ``model.train()``: the frozen backbone back in eval mode (its BatchNorm statistics
    and dropout stay as trained); only the head trains."""
    head = {k.rsplit(".", 1)[0] for k in head_keys(model, num_classes)}
    model.eval()
    for name, module in model.named_modules():
        if name in head:
            module.train()
