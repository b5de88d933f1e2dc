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
from deeplense_cli.data.transforms import apply_transform
from deeplense_cli.deploy.onnx_session import OnnxModel
from deeplense_cli.deploy.ood_graph import embed_detector
from deeplense_cli.evaluation.ood import FIT_IMAGES, spread, with_degraded
from deeplense_cli.registry.pretrained import FOLDER, shipped_models


def _images(
    folder: Path, n: int, transform: dict[str, Any], degraded: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    images = load_image_set(folder)
    idx = spread(np.arange(len(images.labels)), n)
    raw, labels = np.asarray(images.images[idx]), np.asarray(images.labels)[idx]
    if degraded:
        raw, more = with_degraded(raw, labels)
        assert more is not None
        labels = more
    return apply_transform(raw, transform), labels


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
    fit_x, fit_y = _images(args.fit, FIT_IMAGES, transform, args.degraded)
    cal_x, _ = _images(args.calibrate, args.calibration_images, transform, args.degraded)
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
        test_x, test_y = _images(args.test, 100_000, transform)
        logits, scores = OnnxModel(tmp, device="cpu").outputs(test_x)
        assert scores is not None
    flagged = scores > detector.threshold
    card = json.loads((FOLDER / f"{shipped.name}.json").read_text())
    card["ood"] = {
        **detector.summary(),
        "test_flagged": float(flagged.mean()),
        "test_images": len(test_x),
        "test_accuracy_unflagged": float((logits.argmax(1) == test_y)[~flagged].mean()),
        "tool": "scripts/embed_ood.py",
    }
    atomic.write_text(FOLDER / f"{shipped.name}.json", json.dumps(card, indent=2) + "\n")
    print(json.dumps(card["ood"], indent=2))


if __name__ == "__main__":
    main()
