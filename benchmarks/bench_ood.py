"""What the out-of-distribution output costs predict: images/s of a shipped model's ONNX file
with its ``ood_score`` output against the same file without it, in one process, interleaved.

    python benchmarks/bench_ood.py [--models Model_III,Model_I] [--images 2048] [--repeats 5]

Both files run the way ``predict`` runs them (the model's transform, then one session run per
batch of 64, on the CPU provider); the figure is the ratio of the medians (issue: at most 10%
slower). The input is fresh simulated images of each model's dataset.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine

from deeplense_cli.data.imageset import load_image_set
from deeplense_cli.data.transforms import apply_transform
from deeplense_cli.deploy.onnx_session import OOD_OUTPUT, OnnxModel
from deeplense_cli.registry.pretrained import shipped_models
from deeplense_cli.simulate import simulate_dataset


def _stripped(path: Path, out: Path) -> Path:
    """``path`` without the ood_score output (ONNX Runtime prunes the nodes that feed it)."""
    import onnx

    model = onnx.load(str(path))
    keep = [o for o in model.graph.output if o.name != OOD_OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(out))
    return out


def _rate(model: OnnxModel, raw: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(raw), batch):
        model.outputs(apply_transform(raw[i : i + batch], model.transform))
    return len(raw) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="Model_III,Model_I")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    shipped = shipped_models()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = shipped[name.lower()]
            dataset = model.card["dataset"]
            per_class = -(-args.images // 3)
            simulate_dataset(dataset, Path(tmp), 0, per_class, seed=7, workers=1)
            images = load_image_set(Path(tmp) / f"{dataset}_test")
            raw = np.asarray(images.images[: args.images])
            plain = OnnxModel(_stripped(model.path, Path(tmp) / "plain.onnx"), device="cpu")
            full = OnnxModel(model.path, device="cpu")
            assert plain.ood is None and full.ood is not None
            _rate(plain, raw[:256], args.batch_size), _rate(full, raw[:256], args.batch_size)
            rates: dict[str, list[float]] = {"without": [], "with": []}
            for _ in range(args.repeats):  # interleaved: the machine's drift hits both
                rates["without"].append(_rate(plain, raw, args.batch_size))
                rates["with"].append(_rate(full, raw, args.batch_size))
            without, with_ = (statistics.median(rates[k]) for k in ("without", "with"))
            print(
                f"{name}: {len(raw)} images, batch {args.batch_size}: without the detector "
                f"{without:.0f} img/s, with it {with_:.0f} img/s: {with_ / without:.3f}x "
                f"(median of {args.repeats}, interleaved)"
            )


if __name__ == "__main__":
    main()
