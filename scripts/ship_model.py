"""Ship a trained run as one of deeplense's built-in models (maintainers only).

    python scripts/ship_model.py RUN --name Model_III \
        --simulate "deeplense data simulate Model_III --train-per-class 30000 --test-per-class 0 --seed 1 --out DATA" \
        --simulate "deeplense data simulate Model_III --train-per-class 0 --test-per-class 5000 --seed 2 --out DATA" \
        --command "deeplense train ..." --minutes 140 --machine "..." --commit abc1234

Exports RUN's best checkpoint (validated against PyTorch on the run's test images, with its
out-of-distribution detector fitted on the run's training split and calibrated on its
validation split) to ``deeplense_cli/pretrained/NAME.onnx``, saves the same weights as
``NAME.safetensors`` (for ``train --init NAME``) and writes its model card ``NAME.json`` from the
run's config, its test evaluation (``RUN/evaluation/metrics.json``) and the facts given here.
A run that started from the shipped model (``train --init NAME``) is a new leg: the card's
``lineage`` lists the earlier legs and this one. ``--tta rot180`` bakes test-time augmentation
into the file (``predict`` then averages each image with its half turn unless ``--tta none``);
the card's test metrics are then those of ``deeplense evaluate RUN --tta rot180``
(``RUN/evaluation-rot180/``), with the plain ones beside them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deeplense_cli.core import atomic
from deeplense_cli.deploy.export import export_onnx
from deeplense_cli.evaluation import tta_tag
from deeplense_cli.registry.pretrained import CARD_KEYS, FOLDER
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.runs.task import is_regression

LIMITS = (
    "Trained and tested on lenstronomy simulations of the published DeepLense recipe for this "
    "dataset (see trained_on); real telescope images differ (noise, PSF, source light, lens "
    "populations), so its accuracy on them is unknown. Inputs must be single-band images of the "
    "dataset's size; the transform (min-max per image, then the training statistics) is "
    "embedded in the file."
)

MASS_LIMITS = (
    " It was trained on axion images only, with masses from the simulations' prior (log10 m "
    "uniform in [-24, -22]): it gives any image a mass, a no_sub or cdm image one near or "
    "below the light end of the prior, and its out-of-distribution flag does not catch those "
    "(they look like lensed arcs). Put a classifier first: `deeplense predict Model_III DIR "
    "--mass-model NAME`."
)
CLASSIFIER_METRICS = ("n", "accuracy", "macro_auc", "micro_auc", "auc", "recall", "precision")
REGRESSOR_METRICS = ("n", "mae", "rmse", "r2", "bias", "mae_mean_predictor", "mass_bins")


def _test_metrics(
    regressor: bool, metrics: dict[str, Any], plain: dict[str, Any], tta: str
) -> dict[str, Any]:
    """The card's test figures: a classifier's accuracy and AUCs, a regressor's errors in dex
    (with ``tta``, those of the TTA evaluation and the plain ones beside them)."""
    if regressor:
        return {k: metrics.get(k) for k in REGRESSOR_METRICS} | {
            "target": metrics.get("target"),
            "source": metrics.get("source"),
            "tta": tta,
            "without_tta": {k: plain.get(k) for k in ("mae", "rmse")},
        }
    return {k: metrics.get(k) for k in CLASSIFIER_METRICS} | {
        "confusion_matrix": metrics.get("confusion_matrix"),
        "axion_mass_bins": metrics.get("axion_mass_bins"),
        "source": metrics.get("source"),
        "tta": tta,
        "without_tta": {k: plain.get(k) for k in ("accuracy", "macro_auc")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", required=True, help="Shipped name, e.g. Model_III")
    parser.add_argument("--dataset", help="Dataset (default: the name)")
    parser.add_argument(
        "--simulate", action="append", default=[], help="Commands that made the data"
    )
    parser.add_argument("--command", required=True, help="The training command")
    parser.add_argument("--minutes", type=float, required=True, help="Training wall time")
    parser.add_argument("--machine", required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--tta", default="none", choices=["none", "rot180"])
    args = parser.parse_args()

    run = RunDir.open(args.run)
    plain = json.loads((run.evaluation_dir / "metrics.json").read_text())
    metrics = plain
    if args.tta != "none":  # evaluate RUN --tta TTA wrote it
        tagged = run.evaluation_dir.with_name(run.evaluation_dir.name + tta_tag(args.tta))
        metrics = json.loads((tagged / "metrics.json").read_text())
        assert metrics["tta"] == args.tta and metrics["n"] == plain["n"], tagged
    config = run.read_config()
    history = run.read_metrics()
    regressor = is_regression(run.task)
    score = "val_mae" if regressor else "val_accuracy"
    out = FOLDER / f"{args.name}.onnx"
    previous_path = out.with_suffix(".json")
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else None
    result = export_onnx(run.path, output=out, precision=args.precision, tta=args.tta)
    weights = _save_weights(run, out.with_suffix(".safetensors"))
    split = run.read_record("split")
    card = {
        "name": args.name,
        "task": run.task,
        "dataset": args.dataset or args.name,
        "architecture": config["model"]["name"],
        "precision": args.precision,
        "classes": run.classes,
        "trained_on": {"simulate": args.simulate, "split": split},
        "config": config,
        "test_metrics": _test_metrics(regressor, metrics, plain, args.tta),
        "limits": LIMITS + (MASS_LIMITS if regressor else ""),
        "training": {
            "command": args.command,
            "commit": args.commit,
            "machine": args.machine,
            "minutes": args.minutes,
            "epochs": len(history),
            "best_epoch": metrics.get("checkpoint_epoch"),
            "history": [
                {k: row.get(k) for k in ("epoch", "train_loss", "val_loss", score) if k in row}
                for row in history
            ],
        },
        "export": {
            "size_bytes": result.size_bytes,
            "opset": result.opset,
            "accuracy_torch": result.accuracy_torch,
            "accuracy_onnx": result.accuracy_onnx,
            "checks": [c.__dict__ for c in result.checks],
        }
        | ({"regression": result.regression} if regressor else {}),
    }
    card["weights"] = weights
    card["ood"] = result.ood
    this_leg = {
        "command": args.command,
        "commit": args.commit,
        "machine": args.machine,
        "minutes": args.minutes,
        "data": args.simulate,
        "started_from": (config["train"].get("init") or "random weights"),
        "best_epoch": metrics.get("checkpoint_epoch"),
        "test_accuracy": metrics.get("accuracy"),
        "tta": args.tta,
    } | ({"test_mae_dex": metrics.get("mae")} if regressor else {})
    earlier: list[dict[str, Any]] = []
    if previous is not None and config["train"].get("init", "") == args.name:
        earlier = previous.get("lineage") or [
            {
                **{k: previous["training"].get(k) for k in ("command", "commit", "machine")},
                "minutes": previous["training"].get("minutes"),
                "data": previous.get("trained_on", {}).get("simulate"),
                "started_from": "random weights",
                "test_accuracy": (previous.get("test_metrics") or {}).get("accuracy"),
                "test_mae_dex": (previous.get("test_metrics") or {}).get("mae"),
            }
        ]
    card["lineage"] = [*earlier, this_leg]
    missing = set(CARD_KEYS) - set(card)
    assert not missing, missing
    atomic.write_json(out.with_suffix(".json"), card)
    print(f"shipped {out} ({result.size_bytes / 1e6:.1f} MB) and its card")


def _save_weights(run: RunDir, path: Path) -> dict[str, Any]:
    """The run's best weights as safetensors (tensors only: loading runs no code)."""
    import hashlib

    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in run.load_checkpoint("best")["model"].items()}
    with atomic.atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "deeplense-weights/1"})
    return {
        "file": path.name,
        "format": "safetensors",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size_bytes": path.stat().st_size,
        "source": f"the best checkpoint of the run ({run.path.name})",
    }


if __name__ == "__main__":
    main()
