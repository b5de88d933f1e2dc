"""int8 quantization schemes on THIS CPU: how far each lands from PyTorch, and how fast it runs.

ONNX Runtime's x86 integer kernels multiply uint8 activations by int8 weights (U8S8). On CPUs
with VNNI that is one exact instruction; on AVX2 and AVX-512 CPUs without VNNI, MLAS uses
VPMADDUBSW, which adds pairs of products into 16 bits and saturates when they do not fit. With
8-bit weights that happens (255 x 127 x 2 > 32,767) and logits drift; 7-bit weights
(``reduce_range``) cannot overflow there. This script exports a trained run's model once in
fp32, quantizes it with every scheme deeplense knows
(``deeplense_cli.deploy.precision.INT8_SCHEMES``), and reports, on the run's own test images:

* top-class agreement with PyTorch, the largest logit error, and test accuracy (for an
  axion-mass regressor: the mean and largest |ONNX - PyTorch| and the test MAE, in dex);
* median latency at batch 1 and 64, every session timed in alternation with fp32.

    OMP_NUM_THREADS=2 python benchmarks/bench_int8.py RUN [--images 512] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

from bench_onnx import interleaved, machine  # noqa: E402  (sets OpenMP's policy first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a training run directory")
    ap.add_argument("--images", type=int, default=512, help="test images to compare on")
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30, help="timed calls at batch 1")
    ap.add_argument("--out", help="also write the markdown to this file")
    args = ap.parse_args()

    import numpy as np

    from deeplense_cli.deploy.export import _load_data, export_fp32
    from deeplense_cli.deploy.onnx_session import INPUT_NAME, create_session
    from deeplense_cli.deploy.precision import INT8_SCHEMES, quantize_int8
    from deeplense_cli.deploy.validate import compare, ort_logits, torch_logits
    from deeplense_cli.runs.rundir import RunDir
    from deeplense_cli.runs.task import is_regression

    run = RunDir.open(args.run)
    arch = str(run.read_config()["model"]["name"])
    model = run.build_model("best")
    data = _load_data(run, run.transform, args.images, args.calibration)
    if data.labels is None:
        sys.exit(f"{args.run}: the run's test images are not available ({data.note})")
    reference = torch_logits(model, data.test)
    scaling = run.target_scaling if is_regression(run.task) else None  # a regressor: in dex
    lines = [f"Machine: {machine()}", "", f"{arch} ({args.run}), {data.note}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = work / "fp32.onnx"
        export_fp32(model, data.test[:64], fp32)
        files = {"fp32": fp32}
        for scheme in INT8_SCHEMES:
            out = work / f"{scheme}.onnx"
            quantize_int8(fp32, out, data.calibration, work, scheme=scheme)
            files[scheme] = out
        sessions = {k: create_session(p, "cpu", cache_optimized=False)[0] for k, p in files.items()}
        judged = (
            "mean / max abs error (dex) | test MAE (dex)"
            if scaling
            else "top class = PyTorch | max abs logit error | test accuracy"
        )
        rows = [
            f"| file | MB | {judged} | batch 1 ms | fp32/this | batch 64 ms | fp32/this |",
            "|---|---|---|---|---|---|---|---|" + ("" if scaling else "---|"),
        ]
        lat1, lat64 = (
            interleaved(
                {k: (lambda s=s, x=x: s.run(None, {INPUT_NAME: x})) for k, s in sessions.items()},
                repeats,
            )
            for x, repeats in ((data.test[:1], args.repeats), (data.test[:64], args.repeats // 4))
        )
        for name, session in sessions.items():
            logits = ort_logits(session, data.test, 64)
            if scaling:
                mass = scaling.to_log10_mass(logits[:, 0].astype(np.float64))
                torch_mass = scaling.to_log10_mass(reference[:, 0].astype(np.float64))
                diff = np.abs(mass - torch_mass)
                mae = np.abs(mass - data.log10_mass).mean()
                cells = f"{diff.mean():.4f} / {diff.max():.3f} | {mae:.4f}"
            else:
                max_abs, _, agree = compare(logits, reference)
                acc = float((logits.argmax(1) == data.labels).mean())
                cells = f"{agree:.1%} | {max_abs:.3g} | {acc:.2%}"
            rows.append(
                f"| {name} | {files[name].stat().st_size / 1e6:.1f} | {cells} "
                f"| {lat1[name] * 1e3:.2f} | {lat1['fp32'] / lat1[name]:.2f}x "
                f"| {lat64[name] * 1e3:.1f} | {lat64['fp32'] / lat64[name]:.2f}x |"
            )
        if scaling:
            torch_mass = scaling.to_log10_mass(reference[:, 0].astype(np.float64))
            mae = np.abs(torch_mass - data.log10_mass).mean()
            lines += [*rows, "", f"PyTorch test MAE on the same images: {mae:.4f} dex"]
        else:
            torch_acc = float((reference.argmax(1) == data.labels).mean())
            lines += [*rows, "", f"PyTorch test accuracy on the same images: {torch_acc:.2%}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
