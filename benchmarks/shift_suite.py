"""The out-of-distribution shift suite: the images a user may feed a trained model.

``build`` writes one class-per-folder tree per variant, ``OUT/<variant>/{axion,cdm,no_sub}/``,
and ``OUT/suite.json`` describing each variant (recipe overrides, post-processing, counts,
seed). Simulated variants come from ``simulate_dataset`` with recipe overrides; image i of each
of them shares its random draws (source position, substructure) with image i of ``id`` and
keeps its file name, so variants pair up file by file. All keep the model's image size.

    python benchmarks/shift_suite.py build --model Model_III --per-class 200 --seed 2 --out shift

Variants: id (the model's recipe, a seed and split it did not train on), other_instrument
(another dataset's recipe, resampled to the model's size), lens_light, psf_wide (2.5x the
PSF), pixel_scale (1.5x), einstein_big (theta_E 1.6-2.0" for 1.28"), no_noise, more_noise
(3x Model_I's noise), minmax and times1000 (id scaled to [0, 1] per image, or by 1000: the
models min-max normalise each image, so these should change nothing), png8 (id quantised to
8 bits, PNG), jpeg (8 bits, quality 75), pure_noise (Gaussian noise), blank (constant images).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deeplense_cli import simulate as S
from deeplense_cli.data import KNOWN_CLASSES, KNOWN_DATASETS

# the instrument a model did not see; Model_I's 150 px images come from Model_III's 64 px
OTHER_INSTRUMENT = {"Model_I": "Model_III", "Model_II": "Model_III", "Model_III": "Model_II"}
JPEG_QUALITY = 75
STAGING = ".staging"


@dataclass
class Variant:
    name: str
    description: str
    source: str  # "simulate" (simulate_dataset), "post" (from id's files), "synthetic"
    dataset: str | None = None  # the recipe's model, for simulated variants
    overrides: dict[str, Any] = field(default_factory=dict)
    post_processing: str = "none"
    file_format: str = "npy"
    transform: Callable[[np.ndarray], np.ndarray] | None = None


def _minmax(image: np.ndarray) -> np.ndarray:
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(_minmax(image) * 255).astype(np.uint8)


def _resample(size: int) -> Callable[[np.ndarray], np.ndarray]:
    def resample(image: np.ndarray) -> np.ndarray:
        if image.shape[0] == size:
            return image
        from scipy import ndimage

        return ndimage.zoom(image, size / image.shape[0], order=1)

    return resample


def variants(model: str) -> list[Variant]:
    """The suite's variants for a ``model`` trained on its published recipe."""
    base = S.base_recipe(model)
    other = OTHER_INSTRUMENT[model]
    size = base.image_size
    noiseless = (
        " (the published recipe has no noise: the same images as id)" if not base.noise else ""
    )
    resized = S.base_recipe(other).image_size != size
    return [
        Variant("id", f"{model}'s published recipe", "simulate", model),
        Variant(
            "other_instrument",
            f"{other}'s recipe, resampled to {size} px",
            "simulate",
            other,
            post_processing=f"bilinear resampling to {size}x{size}" if resized else "none",
            transform=_resample(size) if resized else None,
        ),
        Variant(
            "lens_light", "the lens galaxy's light added", "simulate", model, {"lens_light": True}
        ),
        Variant(
            "psf_wide",
            "2.5x the PSF FWHM",
            "simulate",
            model,
            {"psf_fwhm": round(2.5 * base.psf_fwhm, 6)},
        ),
        Variant(
            "pixel_scale",
            "1.5x the pixel scale (a 1.5x wider field)",
            "simulate",
            model,
            {"pixel_scale": round(1.5 * base.pixel_scale, 6)},
        ),
        Variant(
            "einstein_big",
            "main-lens theta_E drawn in 1.6-2.0 arcsec (published 1.28)",
            "simulate",
            model,
            {"einstein_radius": [1.6, 2.0]},
        ),
        Variant("no_noise", "no noise" + noiseless, "simulate", model, {"noise": 0.0}),
        Variant(
            "more_noise",
            "3x Model_I's noise",
            "simulate",
            model,
            {"noise": 3.0 * max(base.noise, 1.0)},
        ),
        Variant(
            "minmax",
            "id scaled to [0, 1] per image",
            "post",
            post_processing="(x - min) / (max - min) per image",
            transform=_minmax,
        ),
        Variant(
            "times1000",
            "id multiplied by 1000",
            "post",
            post_processing="x * 1000",
            transform=lambda x: x * 1000.0,
        ),
        Variant(
            "png8",
            "id quantised to 8 bits, PNG",
            "post",
            post_processing="min-max per image, rounded to uint8, PNG",
            file_format="png",
        ),
        Variant(
            "jpeg",
            f"id quantised to 8 bits, JPEG quality {JPEG_QUALITY}",
            "post",
            post_processing=f"min-max per image, rounded to uint8, JPEG quality {JPEG_QUALITY}",
            file_format="jpg",
        ),
        Variant(
            "pure_noise",
            "Gaussian noise, no lens",
            "synthetic",
            post_processing="N(0, 1) per pixel",
        ),
        Variant(
            "blank",
            "constant images at the mean of the matching id image",
            "synthetic",
            post_processing="constant = mean of id image i",
        ),
    ]


# --- files ------------------------------------------------------------------------------------
def _save_npy(path: Path, image: np.ndarray, mass: float | None) -> None:
    if mass is None:
        np.save(path, np.ascontiguousarray(image, dtype=np.float64))
        return
    arr = np.empty(2, dtype=object)  # the released axion format: [image, mass]
    arr[0], arr[1] = np.ascontiguousarray(image, dtype=np.float64), np.float64(mass)
    np.save(path, arr, allow_pickle=True)


def _save(path: Path, image: np.ndarray, mass: float | None, file_format: str) -> None:
    if file_format == "npy":
        _save_npy(path, image, mass)
        return
    from PIL import Image

    picture = Image.fromarray(_to_uint8(image), mode="L")
    if file_format == "png":
        picture.save(path, format="PNG")
    else:
        picture.save(path, format="JPEG", quality=JPEG_QUALITY)


def _class_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npy"))


# --- build ------------------------------------------------------------------------------------
def _simulate(
    variant: Variant, out: Path, per_class: int, seed: int, split: str, workers: int | None
) -> None:
    assert variant.dataset is not None
    staging = out / STAGING / variant.name
    counts = (per_class, 0) if split == "train" else (0, per_class)
    summary = S.simulate_dataset(
        variant.dataset,
        staging,
        *counts,
        seed=seed,
        workers=workers,
        recipe=variant.overrides,
    )
    made = Path(summary["train_dir" if split == "train" else "test_dir"])
    target = out / variant.name
    target.mkdir(parents=True)
    for cls in KNOWN_CLASSES:
        (made / cls).rename(target / cls)
    shutil.copy(made / "recipe.json", target / "recipe.json")
    shutil.rmtree(staging)
    if variant.transform is not None:
        for cls in KNOWN_CLASSES:
            for path in _class_files(target / cls):
                image, mass = S.load_sample(path)
                _save_npy(path, variant.transform(image), mass)


def _derive(variant: Variant, out: Path, seed: int) -> None:
    """A variant made from id's files (post-processing) or in their shape (synthetic)."""
    for ci, cls in enumerate(KNOWN_CLASSES):
        folder = out / variant.name / cls
        folder.mkdir(parents=True)
        for i, path in enumerate(_class_files(out / "id" / cls)):
            image, mass = S.load_sample(path)
            if variant.name == "pure_noise":
                rng = np.random.default_rng([seed, ci, i])
                new, mass = rng.standard_normal(image.shape), None
            elif variant.name == "blank":
                new, mass = np.full_like(image, image.mean()), None
            elif variant.transform is not None:
                new = variant.transform(image)
            else:
                new = image
            name = path.with_suffix(f".{variant.file_format}").name
            _save(folder / name, new, mass, variant.file_format)


def build(
    model: str,
    per_class: int,
    seed: int,
    out: Path,
    split: str = "test",
    only: list[str] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build the suite under ``out``; returns what ``suite.json`` holds."""
    spec = S.model_spec(model)
    chosen = variants(spec.name)
    names = [v.name for v in chosen]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(names)}")
        # every variant but the simulated ones is made from id's images
        derived = any(v.source != "simulate" for v in chosen if v.name in only)
        chosen = [v for v in chosen if v.name in only or (derived and v.name == "id")]
    if per_class < 1:
        raise SystemExit("--per-class must be >= 1")
    if (out / "suite.json").exists() or any((out / v.name).exists() for v in chosen):
        if not overwrite:
            raise SystemExit(f"{out} already holds a suite; use another --out or --overwrite")
        for v in [*chosen, Variant(STAGING, "", "")]:
            shutil.rmtree(out / v.name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    described: dict[str, Any] = {}
    for variant in chosen:
        t0 = time.perf_counter()
        if variant.source == "simulate":
            _simulate(variant, out, per_class, seed, split, workers)
        else:
            _derive(variant, out, seed)
        seconds = time.perf_counter() - t0
        counts = {
            cls: sum(1 for p in (out / variant.name / cls).iterdir() if p.is_file())
            for cls in KNOWN_CLASSES
        }
        described[variant.name] = {
            "description": variant.description,
            "source": variant.source,
            "dataset": variant.dataset,
            "recipe_overrides": variant.overrides,
            "post_processing": variant.post_processing,
            "file_format": variant.file_format,
            "counts": counts,
            "seconds": round(seconds, 2),
        }
        print(
            f"  {variant.name:<17} {sum(counts.values()):>6} images  {seconds:7.1f} s", flush=True
        )
    shutil.rmtree(out / STAGING, ignore_errors=True)
    total = time.perf_counter() - t_start
    suite = {
        "model": spec.name,
        "image_size": spec.num_pix,
        "seed": seed,
        "split": split,
        "per_class": per_class,
        "classes": list(KNOWN_CLASSES),
        "seconds": round(total, 2),
        "variants": described,
    }
    (out / "suite.json").write_text(json.dumps(suite, indent=2) + "\n")
    n = sum(sum(v["counts"].values()) for v in described.values())
    print(f"Built {len(described)} variants, {n} images in {out} in {total:.1f} s")
    return suite


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser(
        "build",
        help="simulate and post-process the suite's images",
        description="Write OUT/<variant>/{axion,cdm,no_sub}/ for every variant and OUT/suite.json.",
    )
    b.add_argument("--model", required=True, choices=KNOWN_DATASETS, help="the model's dataset")
    b.add_argument("--per-class", type=int, default=200, help="images per class and variant")
    b.add_argument(
        "--seed", type=int, default=2, help="simulation seed (one the model was not trained on)"
    )
    b.add_argument("--split", choices=("train", "test"), default="test", help="seed's split")
    b.add_argument("--out", type=Path, required=True, help="folder for the suite")
    b.add_argument("--variants", help="comma-separated subset (default: all)")
    b.add_argument(
        "--workers", type=int, default=None, help="simulation workers (default: all cores)"
    )
    b.add_argument("--overwrite", action="store_true", help="replace a suite already in --out")
    m = commands.add_parser(
        "measure",
        help="score a model on a built suite: accuracy, flagged share, detector AUROC",
        description="Per variant: the model's accuracy, the share of images its "
        "out-of-distribution detector flags, and the detector's AUROC against the id variant.",
    )
    m.add_argument("--suite", type=Path, required=True, help="a folder made by build")
    m.add_argument("--model", required=True, help="a shipped model's name, an .onnx or a run")
    m.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser


def _variant_outputs(predictor: Any, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, predicted, ood scores) of every image under ``folder``, by class folder."""
    from deeplense_cli.data.readers import find_images, read_image
    from deeplense_cli.data.transforms import apply_transform, source_size
    from deeplense_cli.deploy.predict import fit_image

    size = source_size(predictor.transform)
    labels, preds, scores = [], [], []
    for label, cls in enumerate(predictor.classes):
        files = find_images([folder / cls]) if (folder / cls).is_dir() else []
        for start in range(0, len(files), 256):
            raw = np.stack(
                [fit_image(read_image(f)[0], size, 1, True, f) for f in files[start : start + 256]]
            )
            logits, score = predictor.outputs(apply_transform(raw, predictor.transform))
            labels += [label] * len(raw)
            preds.append(logits.argmax(1))
            scores.append(score)
    return np.array(labels), np.concatenate(preds), np.concatenate(scores)


def measure(suite_dir: Path, model: str) -> dict[str, Any]:
    """The model's accuracy, flagged share and detector AUROC (variant against id) on every
    variant of the suite."""
    from _machine import machine
    from sklearn.metrics import roc_auc_score

    from deeplense_cli.deploy.predict import load_predictor

    suite = json.loads((suite_dir / "suite.json").read_text())
    predictor = load_predictor(model, device="cpu")
    threshold = predictor.ood_threshold
    if threshold is None:
        raise SystemExit(f"{model} has no out-of-distribution detector")
    rows: dict[str, dict[str, Any]] = {}
    id_scores = None
    for name in ["id", *[v for v in suite["variants"] if v != "id"]]:
        labels, preds, scores = _variant_outputs(predictor, suite_dir / name)
        meaningful = name not in ("pure_noise", "blank")  # their class folders mean nothing
        row: dict[str, Any] = {
            "images": len(labels),
            "accuracy": float((preds == labels).mean()) if meaningful else None,
            "flagged": float((scores > threshold).mean()),
        }
        if name == "id":
            id_scores = scores
        else:
            assert id_scores is not None
            truth = np.r_[np.zeros(len(id_scores)), np.ones(len(scores))]
            row["auroc"] = float(roc_auc_score(truth, np.r_[id_scores, scores]))
        rows[name] = row
        print(
            f"{name:17s} n={row['images']:5d}  accuracy "
            + ("   -   " if row["accuracy"] is None else f"{row['accuracy']:7.2%}")
            + f"  flagged {row['flagged']:7.2%}  AUROC {row.get('auroc', float('nan')):.4f}",
            flush=True,
        )
    chance = 1 / len(predictor.classes)
    id_accuracy = rows["id"]["accuracy"]
    for row in rows.values():
        # the rule: a variant whose accuracy fell more than half-way to chance must be
        # flagged (at least 95% of it)
        acc = row["accuracy"]
        row["must_flag"] = acc is None or acc < (id_accuracy + chance) / 2
    return {
        "model": model,
        "suite": str(suite_dir),
        "seed": suite.get("seed"),
        "threshold": threshold,
        "machine": machine(),
        "variants": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build":
        only = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
        print(
            f"Building the shift suite for {args.model}: {args.per_class} per class and variant, "
            f"seed {args.seed} ({args.split} split), into {args.out}",
            flush=True,
        )
        build(
            args.model,
            args.per_class,
            args.seed,
            args.out,
            split=args.split,
            only=only,
            workers=args.workers,
            overwrite=args.overwrite,
        )
    elif args.command == "measure":
        result = measure(args.suite, args.model)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
