"""deeplense's CUDA paths end to end, in one short run on a GPU machine (CI has no GPU).

    python benchmarks/gpu_check.py OUTDIR [--budget-s 480] [--fullsize]

Needs a CUDA machine and deeplense installed with ``onnxruntime-gpu`` (``pip install
'deeplense[gpu]'``). Every step is the real command a user types, timed and logged:

* simulate a small Model_III set (all cores);
* train ResNet18, CvT and EfficientNet-B0 on CUDA with ``--amp auto`` (bf16 on a card that has
  it), and ResNet18 with ``--amp fp16`` (the gradient scaler's path); a wrong ``cuda:N`` is a
  one-line error;
* evaluate a run on CUDA; export fp32 and fp16 ONNX; predict and evaluate the ONNX files through
  ONNX Runtime's CUDA provider and compare with the CPU's answers; ``--device tensorrt`` either
  runs or says in one line why it cannot; ``--device auto`` names what it picked; the shipped
  Model_III model on the real released samples, on CUDA;
* ``bench_gpu.py`` (PyTorch AMP against ONNX Runtime CUDA and TensorRT);
* the test files whose code paths change on CUDA (``--device auto`` resolves to the GPU there);
* with ``--fullsize`` and the budget left: Model_II at its released size (30,000 training images
  per class, seed 1; 5,000 test images per class, seed 2), CvT on a 50 px crop with the CPU
  runs' recipe, trained until the budget's end; its run folder is packed into OUTDIR.

Writes OUTDIR/report.md (one row per check: verdict, seconds, what it measured) and
OUTDIR/logs.tar.gz. Exits 1 if a check failed. ``--device cpu`` runs the same harness on a CPU
(small sizes, GPU-only checks skipped) to test the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEEPLENSE = shlex.split(os.environ.get("DEEPLENSE", f"{sys.executable} -m deeplense_cli"))


class Check:
    def __init__(self, out: Path, work: Path, device: str, deadline: float) -> None:
        self.out, self.work, self.device, self.deadline = out, work, device, deadline
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rows: list[tuple[str, str, float, str]] = []

    def run(self, name: str, args: list[str], timeout: float = 300) -> tuple[int, str, str, float]:
        """Run a command; its stdout and stderr go to logs/NAME.{out,err}."""
        timeout = max(5.0, min(timeout, self.deadline - time.monotonic()))
        t = time.monotonic()
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=self.work)
            rc, so, se = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as exc:
            rc, so, se = (
                124,
                _text(exc.stdout),
                _text(exc.stderr) + f"\n[timed out after {timeout:.0f} s]",
            )
        secs = time.monotonic() - t
        (self.logs / f"{name}.out").write_text(so)
        (self.logs / f"{name}.err").write_text(f"$ {shlex.join(args)}\n[rc {rc}]\n{se}")
        return rc, so, se, secs

    def dl(self, name: str, *args: str, timeout: float = 300) -> tuple[int, str, str, float]:
        return self.run(name, [*DEEPLENSE, *args], timeout)

    def dl_json(
        self, name: str, *args: str, timeout: float = 300
    ) -> tuple[int, dict[str, Any], str, float]:
        """A deeplense call with ``--json`` output: (exit status, the document, stderr, s)."""
        rc, so, se, secs = self.dl(name, *args, timeout=timeout)
        return rc, _json(so), se, secs

    def record(self, name: str, ok: bool | None, secs: float, detail: str) -> None:
        verdict = {True: "pass", False: "FAIL", None: "skip"}[ok]
        self.rows.append((name, verdict, secs, detail))
        print(f"[{verdict}] {name} ({secs:.1f} s): {detail}", flush=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _text(b: Any) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _jsonl(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def _json(text: str) -> dict[str, Any]:
    try:
        return json.loads(text[text.index("{") :])
    except ValueError:
        return {}


def one_line_error(rc: int, err: str) -> bool:
    """What the project promises for bad requests: non-zero exit, one line, no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return rc not in (0, 124) and "Traceback" not in err and len(lines) == 1


def env_report(c: Check) -> None:
    code = (
        "import torch, onnxruntime as o, platform;"
        "print(f'python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        'onnxruntime {o.__version__}: {", ".join(o.get_available_providers())}\');'
        "print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
    )
    rc, so, se, secs = c.run("env", [sys.executable, "-c", code], 120)
    c.record("environment", rc == 0, secs, " / ".join(so.split("\n")[:2]) or se[-200:])


def train(c: Check, name: str, model: str, data: Path, epochs: int, *extra: str) -> dict[str, Any]:
    run = c.work / "runs" / name
    rc, so, se, secs = c.dl(
        f"train-{name}", "train", "--model", model, "--data", str(data), "--epochs", str(epochs),
        "--device", c.device, "--run-dir", str(run), "--output", "jsonl", *extra, timeout=600,
    )  # fmt: skip
    events = _jsonl(so)
    start = next((e for e in events if e.get("event") == "start"), {})
    epochs_ev = [e for e in events if e.get("event") == "epoch"]
    end = next((e for e in events if e.get("event") == "end"), {})
    rates = [e["train_images_per_s"] for e in epochs_ev[1:] or epochs_ev]
    rate = statistics.median(rates) if rates else 0.0
    test = end.get("test") or {}
    losses_ok = all(e.get("train_loss") == e.get("train_loss") for e in epochs_ev)  # no NaN
    acc = float(test.get("accuracy", 0.0))
    ok = (
        rc == 0
        and str(start.get("device", "")).startswith(c.device)
        and losses_ok
        and acc > 0.5  # three balanced classes: chance is 1/3
    )
    c.record(
        f"train {name}",
        ok,
        secs,
        f"device {start.get('device')}, amp {start.get('amp')}, {len(epochs_ev)} epochs, "
        f"{rate:,.0f} train img/s (median epoch), test {100 * acc:.2f}% "
        f"(macro AUC {test.get('macro_auc', 0):.4f}) on {test.get('n', '?')} images"
        + ("" if rc == 0 else f"; rc {rc}: {se.strip().splitlines()[-1:]}"),
    )
    return {"run": run, "rate": rate, "test": test, "start": start, "ok": ok}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting work after this")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--fullsize", action="store_true", help="Model_II CvT run with the time left")
    ap.add_argument("--work", type=Path, help="work folder [default: OUTDIR/../gpu-check-work]")
    args = ap.parse_args()
    t0 = time.monotonic()
    gpu = args.device == "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    work = (args.work or args.out.parent / "gpu-check-work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    c = Check(args.out, work, args.device, t0 + args.budget_s)
    try:
        return checks(c, args, gpu)
    finally:
        write_report(c, args, time.monotonic() - t0)


def checks(c: Check, args: argparse.Namespace, gpu: bool) -> int:
    env_report(c)
    per_class, test_per_class, epochs = (3000, 1000, 6) if gpu else (60, 30, 1)
    rc, so, se, secs = c.dl(
        "simulate", "data", "simulate", "Model_III", "--train-per-class", str(per_class),
        "--test-per-class", str(test_per_class), "--seed", "11", "--out", "data",
        "--workers", str(args.workers), timeout=300,
    )  # fmt: skip
    n = 3 * (per_class + test_per_class)
    c.record(
        "simulate Model_III",
        rc == 0,
        secs,
        f"{n} images, {n / secs:,.0f} img/s, {args.workers} workers",
    )
    data, test = c.work / "data/Model_III", c.work / "data/Model_III_test"

    runs = {
        "resnet18": train(c, "resnet18", "resnet18", data, epochs),
        "cvt": train(c, "cvt", "cvt", data, epochs),
        "efficientnet_b0": train(c, "efficientnet_b0", "EfficientNet-B0", data, epochs),
    }
    if gpu:
        r = train(c, "resnet18-fp16", "resnet18", data, 3, "--amp", "fp16")
        rows = c.rows[-1]
        if r["start"].get("amp") != "float16":
            c.rows[-1] = (rows[0], "FAIL", rows[2], rows[3] + " (expected amp float16)")
        rc, so, se, secs = c.dl(
            "train-cuda7", "train", "--model", "resnet18", "--data", str(data), "--epochs", "1",
            "--device", "cuda:7", "--run-dir", str(c.work / "runs/cuda7"), timeout=120,
        )  # fmt: skip
        c.record(
            "train --device cuda:7 (absent)",
            one_line_error(rc, se) and not (c.work / "runs/cuda7").exists(),
            secs,
            se.strip()[:200],
        )

    if gpu:
        batch_sizes(c, data)
    run_tests(c, gpu)

    cvt = runs["cvt"]["run"]
    rc, ev, se, secs = c.dl_json(
        "evaluate-cvt", "evaluate", str(cvt), "--device", c.device, "--json"
    )
    trained = runs["cvt"]["test"].get("accuracy")
    c.record(
        "evaluate CvT run (PyTorch)",
        rc == 0
        and trained is not None
        and abs(ev.get("accuracy", -1) - trained) <= 2 / max(1, ev.get("n", 1)),
        secs,
        f"{100 * ev.get('accuracy', 0):.2f}% on {ev.get('n')} (train's own evaluation {100 * (trained or 0):.2f}%)",
    )

    onnx: dict[str, Path] = {}
    for name in ("cvt", "resnet18", "efficientnet_b0"):
        run = runs[name]["run"]
        for precision in ("fp32", "fp16"):
            path = run / f"model-{precision}.onnx"
            rc, res, se, secs = c.dl_json(
                f"export-{name}-{precision}", "export", "onnx", str(run), "--precision", precision,
                "-o", str(path), "--json", timeout=300,
            )  # fmt: skip
            c.record(
                f"export {name} {precision}", rc == 0 and path.is_file(), secs, _short(res, se)
            )
            onnx[f"{name}-{precision}"] = path

    cpu_pred = predict(c, "cvt-fp32-cpu", onnx["cvt-fp32"], test, "cpu")
    for key in ("cvt-fp32", "cvt-fp16", "resnet18-fp32", "resnet18-fp16", "efficientnet_b0-fp16"):
        if not gpu:
            break
        if not onnx[key].is_file():
            c.record(f"predict {key}-cuda", None, 0, "no such export (see its export row)")
            continue
        ref = (
            cpu_pred
            if key == "cvt-fp32"
            else predict(
                c, f"{key}-cpu", onnx[key.replace("fp16", "fp32")], test, "cpu", quiet=True
            )
        )
        predict(
            c,
            f"{key}-cuda",
            onnx[key],
            test,
            "cuda",
            ref=ref,
            min_agree=0.995 if key.endswith("fp32") else 0.98,
        )

    if gpu:
        rc, eo, se, secs = c.dl_json(
            "evaluate-onnx-cuda", "evaluate", str(onnx["cvt-fp32"]), "--data", str(test),
            "--device", "cuda", "--json", "--out", str(c.work / "eval-onnx"),
        )  # fmt: skip
        c.record(
            "evaluate CvT ONNX on CUDA",
            rc == 0 and abs(eo.get("accuracy", -1) - ev.get("accuracy", -2)) <= 0.005,
            secs,
            f"{100 * eo.get('accuracy', 0):.2f}% (PyTorch {100 * ev.get('accuracy', 0):.2f}%), macro AUC {eo.get('macro_auc', 0):.4f}"
            + ("" if rc == 0 else f"; {se.strip()[-200:]}"),
        )
        rc, res, se, secs = c.dl_json(
            "predict-trt",
            "predict",
            str(onnx["cvt-fp32"]),
            str(test),
            "--device",
            "tensorrt",
            "--json",
            timeout=300,
        )
        if rc == 0:
            c.record(
                "predict --device tensorrt",
                res.get("device") == "tensorrt",
                secs,
                f"ran: {res.get('model')}, {res.get('images_per_second')} img/s",
            )
        else:
            c.record(
                "predict --device tensorrt (unavailable: one-line error)",
                one_line_error(rc, se),
                secs,
                se.strip()[:300],
            )
        rc, res, se, secs = c.dl_json(
            "predict-auto",
            "predict",
            str(onnx["cvt-fp32"]),
            str(test),
            "--device",
            "auto",
            "--json",
            timeout=300,
        )
        c.record(
            "predict --device auto",
            rc == 0 and res.get("device") in ("cuda", "tensorrt"),
            secs,
            f"picked {res.get('model')}",
        )
        real = REPO / "examples/real_samples"
        rc, res, se, secs = c.dl_json(
            "predict-shipped", "predict", "Model_III", str(real), "--device", "cuda", "--json"
        )
        preds = {Path(p["path"]).stem: p["predicted"] for p in res.get("predictions", [])}
        c.record(
            "shipped Model_III on the real samples, CUDA",
            rc == 0 and len(preds) == 3 and all(k == v for k, v in preds.items()),
            secs,
            f"{preds} ({res.get('model')})",
        )
        bench = REPO / "benchmarks/bench_gpu.py"
        rc, so, se, secs = c.run(
            "bench_gpu",
            [
                sys.executable,
                str(bench),
                "--models",
                "ResNet18,CvT,CCT,EfficientNet-B0",
                "--batch",
                "256",
            ],
            240,
        )
        (c.out / "bench_gpu.md").write_text(so + ("\n" + se[-3000:] if rc else ""))
        c.record(
            "bench_gpu.py", rc == 0, secs, "table in bench_gpu.md" if rc == 0 else se.strip()[-300:]
        )

    if args.fullsize:
        fullsize(c, args, gpu)
    return 0 if all(r[1] != "FAIL" for r in c.rows) else 1


def batch_sizes(c: Check, data: Path) -> None:
    """Training images/s against batch size: on a GPU the default (64) leaves the card idle."""
    rates = {}
    t = time.monotonic()
    for bs in (64, 256, 1024):
        rc, so, _, _ = c.dl(
            f"train-cvt-bs{bs}", "train", "--model", "cvt", "--data", str(data), "--epochs", "2",
            "--batch-size", str(bs), "--device", c.device, "--no-evaluate", "--run-dir",
            str(c.work / f"runs/cvt-bs{bs}"), "--output", "jsonl", timeout=120,
        )  # fmt: skip
        epochs = [e for e in _jsonl(so) if e.get("event") == "epoch"]
        rates[bs] = epochs[-1]["train_images_per_s"] if rc == 0 and epochs else 0.0
    c.record(
        "CvT training img/s by batch size (second epoch)",
        all(rates.values()),
        time.monotonic() - t,
        ", ".join(f"{bs}: {r:,.0f}" for bs, r in rates.items()),
    )


def run_tests(c: Check, gpu: bool) -> None:
    """The test files whose code paths change when CUDA is visible (auto means the GPU)."""
    files = ["training", "device", "evaluate", "export", "predict", "pretrained"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark"]
    cmd += ["-rfE", "--tb=short", "--rootdir", str(REPO)]
    cmd += [str(REPO / f"tests/test_{f}.py") for f in files] + (["-n", "8"] if gpu else [])
    rc, so, _, secs = c.run("pytest", cmd, 200)
    summary = [line for line in so.splitlines() if " passed" in line or " failed" in line]
    failed = [line.split(" - ")[0] for line in so.splitlines() if line.startswith("FAILED")]
    c.record(
        "pytest (CUDA visible)",
        rc == 0,
        secs,
        (summary[-1] if summary else "(no summary)") + "".join(f"; {f}" for f in failed[:8]),
    )


def predict(
    c: Check, name: str, model: Path, test: Path, device: str,
    ref: dict[str, str] | None = None, min_agree: float = 0.995, quiet: bool = False,
) -> dict[str, str]:  # fmt: skip
    rc, res, se, secs = c.dl_json(
        f"predict-{name}",
        "predict",
        str(model),
        str(test),
        "--device",
        device,
        "--batch-size",
        "256",
        "--json",
    )
    preds = {p["path"]: p["predicted"] for p in res.get("predictions", [])}
    truth = sum(Path(p).parent.name == v for p, v in preds.items()) / max(1, len(preds))
    agree = sum(ref.get(p) == v for p, v in preds.items()) / max(1, len(preds)) if ref else None
    ok = (
        rc == 0
        and res.get("device") == device
        and bool(preds)
        and (agree is None or agree >= min_agree)
    )
    if not quiet or not ok:
        c.record(
            f"predict {name}",
            ok,
            secs,
            f"{res.get('model')}: {len(preds)} images, {res.get('images_per_second')} img/s, accuracy {100 * truth:.2f}%"
            + (
                ""
                if agree is None
                else f", agrees with the CPU's fp32 answers on {100 * agree:.2f}%"
            )
            + ("" if rc == 0 else f"; rc {rc}: {se.strip()[-300:]}"),
        )
    return preds


def fullsize(c: Check, args: argparse.Namespace, gpu: bool) -> None:
    per_class, test_per_class = (30000, 5000) if gpu else (60, 30)
    t = time.monotonic()
    for split, n_train, n_test, seed in (
        ("train", per_class, 0, 1),
        ("test", 0, test_per_class, 2),
    ):
        rc, _, se, _ = c.dl(
            f"fullsize-simulate-{split}", "data", "simulate", "Model_II", "--train-per-class", str(n_train),
            "--test-per-class", str(n_test), "--seed", str(seed), "--out", "full", "--workers", str(args.workers),
        )  # fmt: skip
        if rc:
            c.record("full-size Model_II: simulate", False, time.monotonic() - t, se.strip()[-300:])
            return
    c.record(
        "full-size Model_II: simulate",
        True,
        time.monotonic() - t,
        f"{3 * (per_class + test_per_class)} images",
    )
    minutes = (c.left() - 75) / 60  # leaves the final evaluation and the export inside the budget
    if minutes < 1:
        c.record("full-size Model_II CvT", None, 0, "no time left")
        return
    r = train(
        c, "fullsize-cvt-Model_II", "cvt", c.work / "full/Model_II", 200, "--max-minutes", f"{minutes:.2f}",
        "--ema-decay", "0.999", "--augment", "rot180", "--set", "data.crop=50",
    )  # fmt: skip
    run = r["run"]
    if run.is_dir():
        with tarfile.open(c.out / "fullsize_run.tar.gz", "w:gz") as tar:
            for p in sorted(run.rglob("*")):
                if p.is_file() and "last" not in p.name:
                    tar.add(p, arcname=str(p.relative_to(run.parent)))


def _short(res: dict[str, Any], err: str) -> str:
    if not res:
        return err.strip()[-300:]
    checks = "; ".join(
        f"batch {k.get('batch_size')}: max logit error {k.get('max_abs_error', 0):.2g}, argmax agreement "
        f"{k.get('argmax_agreement')}"
        for k in res.get("checks", [])
    )
    return f"{res.get('size_bytes', 0) / 1e6:.1f} MB, exporter {res.get('exporter')}; {checks}"


def write_report(c: Check, args: argparse.Namespace, total: float) -> None:
    lines = [
        f"# deeplense GPU check ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {total:.0f} s)",
        "",
        "| check | verdict | seconds | measured |",
        "| --- | --- | --- | --- |",
    ]
    for name, verdict, secs, detail in c.rows:
        lines.append(f"| {name} | {verdict} | {secs:.1f} | {detail.replace('|', '/')} |")
    (c.out / "report.md").write_text("\n".join(lines) + "\n")
    with tarfile.open(c.out / "logs.tar.gz", "w:gz") as tar:
        tar.add(c.logs, arcname="logs")


if __name__ == "__main__":
    sys.exit(main())
