"""Trained models that ship inside the package: one ONNX export per dataset and its model card.

``deeplense_cli/pretrained/NAME.onnx`` is a validated ``deeplense export onnx`` file,
``NAME.safetensors`` the same model's PyTorch weights (for ``train --init NAME``: safetensors
holds tensors only, so loading it runs no code) and ``NAME.json`` its card (what it was
trained on, the resolved config, its test metrics, its limits, where the weights came from). A shipped model's name stands wherever a model path goes (``deeplense predict
Model_III images/``), so predicting works offline straight after ``pip install``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeplense_cli.core.errors import DeepLenseError

FOLDER = Path(__file__).resolve().parent.parent / "pretrained"
# What every card must say (tests check each shipped card against this).
CARD_KEYS = (
    "name",
    "dataset",
    "architecture",
    "classes",
    "trained_on",
    "config",
    "test_metrics",
    "limits",
    "training",
)


@dataclass(frozen=True)
class PretrainedModel:
    name: str
    path: Path
    card: dict[str, Any]

    @property
    def weights_path(self) -> Path | None:
        """The PyTorch weights beside the ONNX file (None when this model has none)."""
        path = self.path.with_suffix(".safetensors")
        return path if path.is_file() else None

    @property
    def task(self) -> str:
        """classify, or axion-mass for a regressor (cards from before tasks classify)."""
        return str(self.card.get("task") or "classify")

    @property
    def summary(self) -> dict[str, Any]:
        """The card's headline: for listings."""
        metrics = self.card.get("test_metrics") or {}
        return {
            "name": self.name,
            "task": self.task,
            "dataset": self.card.get("dataset"),
            "architecture": self.card.get("architecture"),
            "precision": self.card.get("precision", "fp32"),
            "test_accuracy": metrics.get("accuracy"),
            "test_macro_auc": metrics.get("macro_auc"),
            # an axion-mass regressor's test error in dex of log10(m / eV)
            "test_mae_dex": metrics.get("mae"),
            "test_images": metrics.get("n"),
            # test-time augmentation the file applies by default (predict --tta none: off)
            "tta": metrics.get("tta", "none"),
            "size_mb": round(self.path.stat().st_size / 1e6, 2),
            "path": str(self.path),
            "weights": str(self.weights_path) if self.weights_path else None,
        }


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeepLenseError(
            f"shipped model card {path} is unreadable ({exc}); reinstall deeplense"
        ) from None
    if not isinstance(card, dict):
        raise DeepLenseError(f"shipped model card {path} is not a mapping; reinstall deeplense")
    return card


def shipped_models(folder: Path | None = None) -> dict[str, PretrainedModel]:
    """The shipped models, keyed by lower-case name (the dataset they were trained on)."""
    folder = folder or FOLDER
    found: dict[str, PretrainedModel] = {}
    if not folder.is_dir():
        return found
    for onnx_path in sorted(folder.glob("*.onnx")):
        card_path = onnx_path.with_suffix(".json")
        if not card_path.is_file():
            continue  # a model without a card does not ship
        card = _read_card(card_path)
        name = str(card.get("name") or onnx_path.stem)
        found[name.lower()] = PretrainedModel(name=name, path=onnx_path, card=card)
    # classifiers first, then regressors; by name within each
    order = sorted(found.values(), key=lambda m: (m.task != "classify", m.name.lower()))
    return {m.name.lower(): m for m in order}


def resolve_model(model: str | os.PathLike[str], folder: Path | None = None) -> Path:
    """A model argument as a file: an existing path as given, else a shipped model's name."""
    path = Path(model)
    if path.exists():
        return path
    shipped = shipped_models(folder)
    found = shipped.get(str(model).lower())
    if found is not None:
        return found.path
    names = ", ".join(m.name for m in shipped.values()) or "none"
    raise DeepLenseError(
        f"{model} is neither a file nor a shipped model (shipped: {names}; "
        "see `deeplense models pretrained`)"
    )
