"""Give a shipped model its out-of-distribution detector (maintainers only).

    python scripts/embed_ood.py Model_III --fit DATA1/Model_III --calibrate DATA3/Model_III \
        --test DATA2/Model_III_test --note "simulate ... --seed 1 / --seed 3 / --seed 2"

Fits the detector (:mod:`deeplense_cli.evaluation.ood`) on what the shipped ONNX file
computes for ``--fit`` images (its own training recipe and seed), sets the threshold on
``--calibrate`` (fresh simulations it never saw), writes the ``ood_score`` output into the
file and records the detector, with the share of ``--test`` images it flags, in the card.
A file that already has a detector gets a new one.
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
from deeplense_cli.deploy.ood_graph import OOD_OUTPUT, embed_detector
from deeplense_cli.evaluation.ood import FIT_IMAGES, spread
from deeplense_cli.registry.pretrained import FOLDER, shipped_models


def _images(folder: Path, n: int, transform: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    images = load_image_set(folder)
    idx = spread(np.arange(len(images.labels)), n)
    return apply_transform(np.asarray(images.images[idx]), transform), images.labels[idx]


def _without_detector(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    if not any(o.name == OOD_OUTPUT for o in model.graph.output):
        return
    keep = [o for o in model.graph.output if o.name != OOD_OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    nodes = [
        n
        for n in model.graph.node
        if not any(o.startswith("ood_") or o == OOD_OUTPUT for o in n.output)
    ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    inits = [t for t in model.graph.initializer if not t.name.startswith("ood_")]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    props = [p for p in model.metadata_props if p.key != "deeplense.ood"]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    onnx.save(model, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("--fit", type=Path, required=True)
    parser.add_argument("--calibrate", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--calibration-images", type=int, default=3000)
    parser.add_argument("--note", default="", help="how the three folders were made")
    args = parser.parse_args()

    shipped = shipped_models()[args.name.lower()]
    transform = OnnxModel(shipped.path, device="cpu").transform
    fit_x, fit_y = _images(args.fit, FIT_IMAGES, transform)
    cal_x, _ = _images(args.calibrate, args.calibration_images, transform)
    with atomic.atomic_path(shipped.path, suffix=".onnx") as tmp:
        shutil.copyfile(shipped.path, tmp)
        _without_detector(tmp)
        detector = embed_detector(
            tmp,
            fit_x,
            fit_y,
            len(shipped.card["classes"]),
            cal_x,
            info={
                "fitted_on": f"{len(fit_x)} images of {args.fit.name} ({args.note})",
                "calibrated_on": f"{len(cal_x)} fresh simulations of {args.calibrate.name}",
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
