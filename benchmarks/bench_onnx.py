"""ONNX Runtime (the session deeplense builds) vs PyTorch eager (and torch.compile), per
architecture, at batch 1 and 64, on this machine, in one run.

Models are built with untrained weights (speed does not depend on the values) at 64 px, one
channel, three classes, exported the way ``deeplense export onnx`` exports them. Eager and
ORT are timed alternately, call by call, so a busy machine slows both alike; the table
gives median latencies and the ratios eager / ORT (> 1: ORT is faster).

    OMP_NUM_THREADS=2 python benchmarks/bench_onnx.py                    # all, fp32 + int8
    python benchmarks/bench_onnx.py --models ResNet18,CCT --variants     # what options buy
    python benchmarks/bench_onnx.py --models CCT --compile --compile-timeout 300

``--variants`` times ONNX Runtime session settings against each other (ORT defaults,
spinning, optimisation levels, one thread, the transformers optimizer) and the export
without deeplense's graph rewrites (einsum -> MatMul, nn.Unfold -> convolution) or with
attention exported as plain ops ("attention unfused", not the fused node). ``--spin``
times deeplense's session (threads sleep between ops) against ``spinning=True`` (threads
spin during a run and stop when it returns, ``session.force_spinning_stop``), idle and with
``--loads`` busy processes competing for the cores. ``--compile``
adds torch.compile (inductor), each model and batch size compiled in a child process that
is killed after ``--compile-timeout`` seconds; the child times the compiled and the eager
model in alternation, and compile/ORT is carried through eager (the child's compile/eager
times the parent's eager/ORT), so both halves of the ratio are interleaved measurements.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

from deeplense_cli.core.cpu import cpu_flags, cpu_model  # noqa: E402
from deeplense_cli.core.device import configure_openmp  # noqa: E402

configure_openmp()  # PyTorch runs as under `deeplense predict RUN` (set before torch loads)


def machine() -> str:
    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16") if f in flags]
    amx = sorted(f for f in flags if f.startswith("amx"))
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    import onnxruntime
    import torch

    return (
        f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores available, "
        f"{' '.join(isa)}; AMX: {' '.join(amx) or 'no'}; load average {load:.1f} at start; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating rounds."""
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def build(name: str) -> Any:
    import torch

    from deeplense_cli.registry.manager import get_architecture

    torch.manual_seed(0)
    return get_architecture(name).build(image_size=64, num_classes=3, in_channels=1).eval()


def export_model(model: Any, workdir: Path, precision: str, exporter: str = "auto") -> Path:
    from deeplense_cli.deploy.export import export_fp32
    from deeplense_cli.deploy.precision import quantize_int8

    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 64, 64), dtype=np.float32)
    fp32 = workdir / "fp32.onnx"
    if not fp32.exists():
        export_fp32(model, x, fp32, exporter=exporter)
    if precision == "fp32":
        return fp32
    out = workdir / f"{precision}.onnx"
    if precision == "int8":
        quantize_int8(fp32, out, x, workdir)
    else:
        from deeplense_cli.deploy.precision import convert_fp16

        convert_fp16(fp32, out)
    return out


def gflop_per_image(model: Any) -> float:
    """Forward-pass GFLOP for one 64x64 image (torch's FLOP counter: matmuls, convs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 1, 64, 64))
    return counter.get_total_flops() / 1e9


def sgemm_peak(threads: int) -> float:
    """GFLOP/s of a large float32 matrix product: what this CPU practically sustains."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(5))
    return 2 * 2048**3 / best / 1e9


def repeats_for(batch: int, base: int) -> int:
    return base if batch == 1 else max(3, base // 4)


def compile_worker(name: str, batch: int, threads: int, repeats: int) -> None:
    """Child process: torch.compile one model at one batch size; print the compiled and the
    eager model's medians, the two timed call by call in alternation."""
    import torch

    torch.set_num_threads(threads)
    model = build(name)
    x = torch.rand(batch, 1, 64, 64)
    compiled = torch.compile(model)
    t0 = time.perf_counter()
    with torch.inference_mode():
        compiled(x)
        compile_s = time.perf_counter() - t0
        med = interleaved({"c": lambda: compiled(x), "e": lambda: model(x)}, repeats)
    print(json.dumps({"median": med["c"], "eager": med["e"], "compile_s": compile_s}))


def compile_median(
    name: str, batch: int, threads: int, repeats: int, timeout: float
) -> tuple[float | None, float | None, str]:
    """The compiled model's median, the eager median timed beside it in the child, a note."""
    cmd = [
        sys.executable,
        __file__,
        "--compile-worker",
        f"{name}:{batch}",
        "--threads",
        str(threads),
        "--repeats",
        str(repeats),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None, f"> {timeout:.0f} s to compile"
    if proc.returncode != 0:
        return None, None, "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:80]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(out["median"]), float(out["eager"]), f"compiled in {out['compile_s']:.0f} s"


def compile_via_eager(r: dict[str, Any]) -> float | None:
    """The compiled model's time carried over to the parent's moment through eager: the
    child's compiled/eager ratio (interleaved there) times the parent's eager median, so that
    compile/ORT is a ratio of two interleaved ratios and the machine's drift between the two
    processes cancels."""
    if r.get("compile") is None or not r.get("compile_eager"):
        return None
    return float(r["compile"]) / float(r["compile_eager"]) * float(r["eager"])


def session(path: Path, threads: int, **kwargs: Any) -> Any:
    import onnxruntime as ort

    from deeplense_cli.deploy.onnx_session import session_options

    return ort.InferenceSession(
        str(path), session_options(threads, **kwargs), providers=["CPUExecutionProvider"]
    )


def bench_model(
    name: str,
    batches: list[int],
    threads: int,
    base_repeats: int,
    precisions: list[str],
    exporter: str = "auto",
) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(threads)
    model = build(name)
    gflop = gflop_per_image(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {
            p: session(export_model(model, Path(tmp), p, exporter), threads) for p in precisions
        }
        for batch in batches:
            x = np.random.default_rng(1).random((batch, 1, 64, 64), dtype=np.float32)
            xt = torch.from_numpy(x)
            fns: dict[str, Callable[[], Any]] = {}
            with torch.inference_mode():
                fns["eager"] = lambda xt=xt: model(xt)
                for p, s in sessions.items():
                    fns[p] = lambda s=s, x=x: s.run(None, {"input": x})
                med = interleaved(fns, repeats_for(batch, base_repeats))
            rows.append({"model": name, "batch": batch, "gflop": gflop * batch, **med})
            print(
                f"  {name} bs{batch}: "
                + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()),
                file=sys.stderr,
                flush=True,
            )
    return rows


def bench_variants(
    name: str, batches: list[int], threads: int, base_repeats: int
) -> list[dict[str, Any]]:
    """What each session setting buys: ORT variants timed against each other."""
    import onnxruntime as ort

    model = build(name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model, Path(tmp), "fp32")
        from deeplense_cli.deploy.export import export_fp32

        plain = Path(tmp) / "no-rewrites.onnx"
        x64 = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
        export_fp32(model, x64, plain, rewrite=False)
        from deeplense_cli.layers.attention import unfused_attention

        unfused = Path(tmp) / "unfused-attention.onnx"
        with unfused_attention():
            export_fp32(model, x64, unfused)
        variants: dict[str, Any] = {
            "deeplense": session(path, threads),
            "attention unfused": session(unfused, threads),
            "no graph rewrites": session(plain, threads),
            "ORT defaults": ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]),
            "spin in runs": session(path, threads, spinning=True),
            "basic opt": session(path, threads, optimization="basic"),
            "no opt": session(path, threads, optimization="none"),
            "1 thread": session(path, 1),
        }
        from deeplense_plugins._channels_last import upstream_stages

        upstream = copy.deepcopy(model)
        # CrossFormer, TwinsSVT: upstream's NCHW stages (CvT exports them already: the same)
        if upstream_stages(upstream):
            old = Path(tmp) / "upstream-stages.onnx"
            export_fp32(upstream, x64, old)
            variants["upstream stages"] = session(old, threads)
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            opt = optimize_model(str(path), model_type="vit", opt_level=0)
            opt_path = Path(tmp) / "vit-opt.onnx"
            opt.save_model_to_file(str(opt_path))
            variants["+transformers optimizer"] = session(opt_path, threads)
        except Exception as exc:  # not every graph has the patterns it fuses
            print(f"  transformers optimizer failed on {name}: {exc}", file=sys.stderr)
        for batch in batches:
            x = np.random.default_rng(1).random((batch, 1, 64, 64), dtype=np.float32)
            fns = {k: (lambda s=s, x=x: s.run(None, {"input": x})) for k, s in variants.items()}
            med = interleaved(fns, repeats_for(batch, base_repeats))
            rows.append({"model": name, "batch": batch, **med})
            print(
                f"  {name} bs{batch}: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in med.items()),
                file=sys.stderr,
                flush=True,
            )
    return rows


def bench_spin(
    name: str, batches: list[int], threads: int, base_repeats: int, loads: list[int]
) -> list[dict[str, Any]]:
    """Sleeping vs run-time spinning threads, per load level (busy processes)."""
    model = build(name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model, Path(tmp), "fp32")
        sessions = {
            "sleep": session(path, threads),
            "spin in runs": session(path, threads, spinning=True),
        }
        for load in loads:
            busy = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)
            ]
            try:
                time.sleep(0.5)
                for batch in batches:
                    x = np.random.default_rng(1).random((batch, 1, 64, 64), dtype=np.float32)
                    fns = {
                        k: (lambda s=s, x=x: s.run(None, {"input": x})) for k, s in sessions.items()
                    }
                    med = interleaved(fns, 2 * repeats_for(batch, base_repeats))
                    rows.append({"model": name, "load": load, "batch": batch, **med})
                    print(f"  {name} load {load} bs{batch}: {med}", file=sys.stderr, flush=True)
            finally:
                for proc in busy:
                    proc.kill()
                    proc.wait()
    return rows


def ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1e3:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.1f}x"


def main() -> None:
    from deeplense_cli.registry.manager import architectures

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated architecture names [default: all]")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=20, help="timed calls at batch 1")
    ap.add_argument("--precisions", default="fp32,int8", help="ONNX precisions to time")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--compile-timeout", type=float, default=300.0)
    ap.add_argument("--exporter", default="auto", choices=["auto", "legacy", "dynamo"])
    ap.add_argument("--variants", action="store_true", help="time ORT session settings")
    ap.add_argument("--spin", action="store_true", help="sleeping vs spinning ORT threads")
    ap.add_argument("--loads", default="0,2", help="--spin: busy processes per level")
    ap.add_argument("--out", help="also write the markdown to this file")
    ap.add_argument("--compile-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compile_worker:
        name, batch = args.compile_worker.split(":")
        compile_worker(name, int(batch), args.threads, args.repeats)
        return

    names = (
        [a.name for a in architectures().values()]
        if not args.models
        else [architectures()[m.strip().lower()].name for m in args.models.split(",")]
    )
    batches = [int(b) for b in args.batches.split(",")]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    lines = [
        f"Machine: {machine()}; {args.threads} threads for torch and ORT; "
        f"{args.exporter} exporter.",
        "",
    ]
    print(lines[0], file=sys.stderr)
    if args.spin:
        loads = [int(v) for v in args.loads.split(",")]
        spin_rows = [
            r for n in names for r in bench_spin(n, batches, args.threads, args.repeats, loads)
        ]
        lines += [
            "Median ms per call (fp32), ORT threads sleeping between ops (deeplense) vs spinning"
            " during runs; loads are busy processes on the same cores:",
            "",
            "| model | load | batch | sleep ms | spin in runs ms | sleep / spin |",
            "|---|---|---|---|---|---|",
        ]
        for r in spin_rows:
            lines.append(
                f"| {r['model']} | {r['load']} | {r['batch']} | {ms(r['sleep'])} | "
                f"{ms(r['spin in runs'])} | {r['sleep'] / r['spin in runs']:.2f}x |"
            )
        for load in loads:
            for b in batches:
                got = [
                    r["sleep"] / r["spin in runs"]
                    for r in spin_rows
                    if r["load"] == load and r["batch"] == b
                ]
                lines.append(
                    f"\nLoad {load}, batch {b}: sleep/spin median {statistics.median(got):.2f}x "
                    f"(min {min(got):.2f}x, max {max(got):.2f}x)"
                )
    elif args.variants:
        all_rows = [
            r for n in names for r in bench_variants(n, batches, args.threads, args.repeats)
        ]
        keys = [k for k in all_rows[0] if k not in ("model", "batch")]
        lines += [
            "Median ms per call, ONNX Runtime session settings (fp32):",
            "",
            "| model | batch | " + " | ".join(keys) + " |",
            "|---|---|" + "---|" * len(keys),
        ]
        for r in all_rows:
            lines.append(
                f"| {r['model']} | {r['batch']} | " + " | ".join(ms(r.get(k)) for k in keys) + " |"
            )
    else:
        rows = [
            r
            for n in names
            for r in bench_model(n, batches, args.threads, args.repeats, precisions, args.exporter)
        ]
        if args.compile:
            for r in rows:
                med, eager, note = compile_median(
                    r["model"],
                    r["batch"],
                    args.threads,
                    repeats_for(r["batch"], args.repeats),
                    args.compile_timeout,
                )
                r["compile"], r["compile_eager"], r["compile_note"] = med, eager, note
                print(f"  {r['model']} bs{r['batch']}: compile {ms(med)} ({note})", file=sys.stderr)
        peak = sgemm_peak(args.threads)
        lines[0] += f" float32 GEMM peak (2048^3 torch.mm): {peak:.0f} GFLOP/s."
        head = ["model", "batch", "eager ms", "fp32 ORT ms", "eager/ORT", "ORT % of peak"]
        if args.compile:
            head += ["compile ms", "eager/compile", "compile/ORT"]
        for p in precisions:
            if p != "fp32":
                head += [f"{p} ORT ms", f"eager/{p}"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [
                r["model"],
                str(r["batch"]),
                ms(r["eager"]),
                ms(r.get("fp32")),
                ratio(r["eager"], r.get("fp32")),
                f"{100 * r['gflop'] / r['fp32'] / peak:.0f}%" if r.get("fp32") else "n/a",
            ]
            if args.compile:
                cells += [
                    ms(r.get("compile")),
                    ratio(r.get("compile_eager"), r.get("compile")),
                    ratio(compile_via_eager(r), r.get("fp32")),
                ]
            for p in precisions:
                if p != "fp32":
                    cells += [ms(r.get(p)), ratio(r["eager"], r.get(p))]
            lines.append("| " + " | ".join(cells) + " |")
        for b in batches:
            ratios = [r["eager"] / r["fp32"] for r in rows if r["batch"] == b and r.get("fp32")]
            if ratios:
                lines.append(
                    f"\nBatch {b}: median eager/ORT fp32 {statistics.median(ratios):.2f}x "
                    f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)"
                )
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
