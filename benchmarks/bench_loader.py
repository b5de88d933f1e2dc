"""Loader throughput: batches from the memory-mapped cache vs one ``.npy`` file per sample.

Generates a class-per-folder tree of small 64x64 float64 images in a temporary folder (the
released Model_II/III layout, axion files included), builds the cache once, then draws
batches of 64 random indices as a training loop would and times both ways of reading them.
Prints a markdown table with images/s, the ratio and the machine.

    python benchmarks/bench_loader.py [--per-class 1000] [--batches 100] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def make_tree(root: Path, per_class: int, size: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    files = []
    for c in ("axion", "cdm", "no_sub"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            img = rng.random((size, size))
            path = root / c / f"{c}_sim_{i}.npy"
            if c == "axion":
                np.save(path, np.array([img, 1e-23], dtype=object), allow_pickle=True)
            else:
                np.save(path, img)
            files.append(path)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="deeplense-bench-") as tmp:
        os.environ["DEEPLENSE_HOME"] = str(Path(tmp) / "home")
        from deeplense_cli.data import load_image_set, read_image

        root = Path(tmp) / "data"
        t0 = time.perf_counter()
        make_tree(root, args.per_class, args.size)
        t_gen = time.perf_counter() - t0

        t0 = time.perf_counter()
        image_set = load_image_set(root)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        image_set = load_image_set(root)
        t_reopen = time.perf_counter() - t0
        n = len(image_set)
        paths = [root / f for f in image_set.files]
        rng = np.random.default_rng(1)
        batches = [rng.choice(n, size=args.batch_size, replace=False) for _ in range(args.batches)]

        def from_cache() -> float:
            t = time.perf_counter()
            for idx in batches:
                x = np.ascontiguousarray(image_set.images[np.sort(idx)])
                y = image_set.labels[np.sort(idx)]
                assert x.shape[0] == len(y)
            return time.perf_counter() - t

        def per_file_safe() -> float:  # what a loader without a cache does (safe reader)
            t = time.perf_counter()
            for idx in batches:
                x = np.stack([read_image(paths[i])[0] for i in idx])
                assert x.shape[0] == len(idx)
            return time.perf_counter() - t

        def per_file_np_load() -> float:  # plain np.load per file (unsafe for axion files)
            t = time.perf_counter()
            for idx in batches:
                out = []
                for i in idx:
                    a = np.load(paths[i], allow_pickle=True)
                    out.append(np.asarray(a[0] if a.dtype == object else a, dtype=np.float32))
                assert len(np.stack(out)) == len(idx)
            return time.perf_counter() - t

        images = args.batches * args.batch_size
        results = []
        for name, fn in (
            ("memory-mapped cache (deeplense)", from_cache),
            ("one file per sample, safe reader", per_file_safe),
            ("one file per sample, np.load", per_file_np_load),
        ):
            fn()  # warm the page cache equally for every method
            best = min(fn() for _ in range(3))
            results.append((name, images / best))

    base = results[0][1]
    print(f"Dataset: {n} files of {args.size}x{args.size} float64 .npy in 3 classes "
          f"(generated in {t_gen:.1f} s); cache built in {t_build:.2f} s "
          f"({n / t_build:.0f} files/s), reopened in {t_reopen * 1000:.0f} ms.")  # fmt: skip
    print(
        f"Batches: {args.batches} x {args.batch_size} random indices, best of 3 runs, warm page cache."
    )
    print(f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}")  # fmt: skip
    print()
    print("| method | images/s | cache is faster by |")
    print("| --- | ---: | ---: |")
    for name, rate in results:
        print(f"| {name} | {rate:,.0f} | {base / rate:.1f}x |")


if __name__ == "__main__":
    main()
