"""Give a shipped model its out-of-distribution detector (maintainers only).

    python scripts/embed_ood.py Model_III --fit DATA1/Model_III --calibrate DATA3/Model_III \
        --test DATA2/Model_III_test --note "simulate ... --seed 1 / --seed 3 / --seed 2"

Fits the detector (:mod:`deeplense_cli.evaluation.ood`) on what the shipped ONNX file
computes for ``--fit`` images (its own training recipe and seed), sets the threshold on
``--calibrate`` (fresh simulations it never saw), writes the ``ood_score`` output into the
file and records the detector, with the share of ``--test`` images it flags, in the card.
A file that already has a detector gets a new one (``--degraded`` adds the 8-bit PNG/JPEG
versions of the fitting and calibration images, for a model trained with ``train.degrade``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from deeplense_cli.core import atomic
from deeplense_cli.data.imageset import load_image_set
from deeplense_cli.data.targets import log10_mass
from deeplense_cli.data.transforms import apply_transform
from deeplense_cli.deploy.onnx_session import OnnxModel
from deeplense_cli.deploy.ood_graph import embed_detector
from deeplense_cli.evaluation.ood import FIT_IMAGES, spread, with_degraded
from deeplense_cli.registry.pretrained import FOLDER, shipped_models


def _images(
    folder: Path, n: int, transform: dict[str, Any], degraded: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images of ``folder`` spread over it, transformed; their labels and log10 masses."""
    images = load_image_set(folder)
    idx = spread(np.arange(len(images.labels)), n)
    raw, labels = np.asarray(images.images[idx]), np.asarray(images.labels)[idx]
    if degraded:
        raw, more = with_degraded(raw, labels)
        assert more is not None
        labels = more
    return apply_transform(raw, transform), labels, log10_mass(images, idx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("--fit", type=Path, required=True)
    parser.add_argument("--calibrate", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--calibration-images", type=int, default=3000)
    parser.add_argument("--note", default="", help="how the three folders were made")
    parser.add_argument(
        "--degraded",
        action="store_true",
        help="also fit and calibrate on 8-bit PNG/JPEG versions (a train.degrade model)",
    )
    args = parser.parse_args()

    shipped = shipped_models()[args.name.lower()]
    transform = OnnxModel(shipped.path, device="cpu").transform
    fit_x, fit_y, _ = _images(args.fit, FIT_IMAGES, transform, args.degraded)
    cal_x, _, _ = _images(args.calibrate, args.calibration_images, transform, args.degraded)
    regressor = shipped.task == "axion-mass"
    if regressor:  # one mean, of the axion images (the folders must hold only those)
        assert set(fit_y.tolist()) == {0}, "fit an axion-mass model on an axion folder alone"
    with atomic.atomic_path(shipped.path, suffix=".onnx") as tmp:
        shutil.copyfile(shipped.path, tmp)
        detector = embed_detector(
            tmp,
            fit_x,
            fit_y,
            len(shipped.card["classes"]),
            cal_x,
            info={
                "fitted_on": f"{len(fit_x)} images of {args.fit.name} ({args.note})",
                "calibrated_on": f"{len(cal_x)} fresh simulations of {args.calibrate.name}",
                "degraded": args.degraded,
            },
        )
        test_x, test_y, test_mass = _images(args.test, 100_000, transform)
        model = OnnxModel(tmp, device="cpu")
        logits, scores = model.outputs(test_x)
        assert scores is not None
    flagged = scores > detector.threshold
    card = json.loads((FOLDER / f"{shipped.name}.json").read_text())
    card["ood"] = {
        **detector.summary(),
        "test_flagged": float(flagged.mean()),
        "test_images": len(test_x),
        "tool": "scripts/embed_ood.py",
    }
    if regressor:  # the error of the masses it does not flag, and of those it does
        assert model.target is not None
        error = np.abs(model.target.to_log10_mass(logits[:, 0].astype(np.float64)) - test_mass)
        card["ood"]["test_mae_unflagged"] = float(error[~flagged].mean())
        card["ood"]["test_mae_flagged"] = float(error[flagged].mean()) if flagged.any() else None
    else:
        card["ood"]["test_accuracy_unflagged"] = float(
            (logits.argmax(1) == test_y)[~flagged].mean()
        )
    atomic.write_text(FOLDER / f"{shipped.name}.json", json.dumps(card, indent=2) + "\n")
    print(json.dumps(card["ood"], indent=2))


if __name__ == "__main__":
    main()
