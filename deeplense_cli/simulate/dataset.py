"""Datasets on disk: the released layout, safe and resumable files, worker processes.

:func:`simulate_dataset` writes ``OUT/Model_X/{class}/*.npy`` and ``OUT/Model_X_test/...``,
and in each of those two folders ``recipe.json``: the recipe its images were made with.
Pool workers run :func:`_init_worker` and :func:`_run_chunk`, which stay top-level functions
of this module so that spawned processes can import them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deeplense_cli.core import atomic
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data import KNOWN_CLASSES
from deeplense_cli.data.readers import read_npy
from deeplense_cli.data.sources import test_folder
from deeplense_cli.simulate.overrides import format_overrides, resolve_recipe
from deeplense_cli.simulate.recipe import Recipe, check_class, model_spec
from deeplense_cli.simulate.render import fast_simulator
from deeplense_cli.simulate.streams import SPLITS, file_name, image_rng


def split_dir(out: Path, model: str, split: str) -> Path:
    """``OUT/Model_X`` for train, ``OUT/Model_X_test`` for test (the released layout)."""
    train = Path(out) / model
    return train if split == "train" else test_folder(train)


def load_sample(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Read one dataset file safely: (image, axion mass or None), keeping its dtype.

    Axion files (a 2-element object array [image, mass]) go through the data package's
    restricted unpickler: no pickled code can run.
    """
    return read_npy(path)


def _file_ok(path: Path, cls: str, shape: tuple[int, int]) -> bool:
    try:
        image, mass = load_sample(path)
    except Exception:
        return False
    if image.shape != shape or image.dtype != np.float64:
        return False
    return (mass is not None and math.isfinite(mass)) if cls == "axion" else mass is None


def _save_sample(path: Path, image: np.ndarray, axion_mass: float) -> None:
    if math.isnan(axion_mass):
        arr: np.ndarray = np.ascontiguousarray(image, dtype=np.float64)
    else:
        arr = np.empty(2, dtype=object)
        arr[0] = np.ascontiguousarray(image, dtype=np.float64)
        arr[1] = np.float64(axion_mass)
    # Readers and resumed runs never see half a file. No fsync per file, as it would dominate
    # the run: after a power loss a damaged file fails the load check on the next run and is
    # simply rewritten.
    with atomic.atomic_path(path, durable=False) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=arr.dtype.hasobject)


RECORD_NAME = "recipe.json"


def read_record(folder: Path) -> dict[str, Any] | None:
    """The ``recipe.json`` of a split folder (None when there is none)."""
    path = Path(folder) / RECORD_NAME
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("recipe"), dict):
            raise ValueError("no recipe in it")
    except (OSError, ValueError) as exc:
        raise DeepLenseError(f"cannot read {path}: {exc}") from None
    return record


def check_records(
    out: Path, recipe: Recipe, train_per_class: int, test_per_class: int
) -> list[Path]:
    """The split folders a run will write; DeepLenseError if one holds another recipe's images."""
    counts = {"train": train_per_class, "test": test_per_class}
    folders = [split_dir(Path(out), recipe.model, s) for s in SPLITS if counts[s]]
    for folder in folders:
        _check_record(folder, recipe)
    return folders


def _check_record(folder: Path, recipe: Recipe) -> None:
    record = read_record(folder)
    ours = format_overrides(recipe.overrides())
    if record is None:
        if recipe.overrides() and next(folder.glob("*/*.npy"), None) is not None:
            raise DeepLenseError(
                f"{folder} already holds images without a {RECORD_NAME} (the published "
                f"recipe?); write images with recipe overrides {ours} to another --out"
            )
        return
    # overrides, not whole recipes: a published value recomputed by another astropy version
    # may differ in its last bit
    if record.get("model") != recipe.model or record.get("overrides") != recipe.overrides():
        theirs = format_overrides(record.get("overrides") or {})
        raise DeepLenseError(
            f"{folder} holds images of another recipe (overrides {theirs}, this run's {ours}); "
            "use another --out or the same --set options"
        )


def _write_record(folder: Path, recipe: Recipe, seed: int) -> None:
    previous = read_record(folder) or {}
    seeds = sorted({*previous.get("seeds", []), seed})
    record = {
        "model": recipe.model,
        "overrides": recipe.overrides(),
        "recipe": recipe.as_dict(),
        "seeds": seeds,
    }
    atomic.write_json(folder / RECORD_NAME, record)


@dataclass(frozen=True)
class _Chunk:
    recipe: Recipe
    model: str
    out: str
    seed: int
    split: str
    cls: str
    start: int
    stop: int


def _run_chunk(chunk: _Chunk) -> tuple[int, int]:
    """Simulate and write the missing files of one chunk: (written, skipped)."""
    n = chunk.recipe.image_size
    folder = split_dir(Path(chunk.out), chunk.model, chunk.split) / chunk.cls
    written = skipped = 0
    for i in range(chunk.start, chunk.stop):
        path = folder / file_name(chunk.seed, chunk.model, chunk.split, chunk.cls, i)
        if path.exists() and _file_ok(path, chunk.cls, (n, n)):
            skipped += 1
            continue
        sim = fast_simulator(chunk.model, chunk.recipe)
        image, params = sim.simulate(
            chunk.cls, image_rng(chunk.seed, chunk.model, chunk.split, chunk.cls, i)
        )
        _save_sample(path, image, params.axion_mass)
        written += 1
    return written, skipped


def _init_worker(recipe: Recipe) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Ctrl-C reaches the whole process group; the parent alone handles it (and terminates us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fast_simulator(recipe.model, recipe)


def _chunks(
    recipe: Recipe,
    out: Path,
    seed: int,
    counts: dict[str, int],
    classes: Sequence[str],
    size: int,
) -> Iterator[_Chunk]:
    for split in SPLITS:
        for cls in classes:
            for start in range(0, counts[split], size):
                stop = min(start + size, counts[split])
                yield _Chunk(recipe, recipe.model, str(out), seed, split, cls, start, stop)


def parse_classes(classes: str | Iterable[str] | None) -> tuple[str, ...]:
    """None -> all classes; "axion,cdm" or an iterable -> validated tuple in canonical order."""
    if classes is None:
        return KNOWN_CLASSES
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    wanted = {c.strip() for c in items if c.strip()}
    if not wanted:
        raise DeepLenseError(f"no classes given; choose from: {', '.join(KNOWN_CLASSES)}")
    for c in wanted:
        check_class(c)
    return tuple(c for c in KNOWN_CLASSES if c in wanted)


def check_request(train_per_class: int, test_per_class: int, seed: int, workers: int | None) -> int:
    """Validate dataset sizes, seed and workers; returns the worker count (None -> all cores)."""
    if train_per_class < 0 or test_per_class < 0:
        raise DeepLenseError("image counts per class must be >= 0")
    if seed < 0:
        raise DeepLenseError(f"seed must be a non-negative integer, got {seed}")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise DeepLenseError(f"workers must be >= 1, got {workers}")
    return workers


def simulate_dataset(
    model: str,
    out: Path,
    train_per_class: int,
    test_per_class: int,
    seed: int = 0,
    workers: int | None = None,
    classes: str | Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = 32,
    recipe: Mapping[str, object] | Recipe | None = None,
) -> dict[str, Any]:
    """Write ``OUT/Model_X/{class}/*.npy`` and ``OUT/Model_X_test/{class}/*.npy``.

    ``recipe`` overrides the model's published recipe, e.g. ``{"psf_fwhm": 0.2,
    "lens_light": True}`` (keys: ``overrides.KEY_HELP``); each split folder records the recipe
    in ``recipe.json``, and a folder that holds another recipe's images is refused.
    Existing files that load correctly are kept (re-running resumes); each file is written
    atomically. ``progress(n)`` is called with the number of images finished (written or
    skipped) since the last call. Returns a summary dictionary.
    """
    spec = model_spec(model)
    resolved = resolve_recipe(spec.name, recipe)
    selected = parse_classes(classes)
    workers = check_request(train_per_class, test_per_class, seed, workers)
    out = Path(out)
    counts = {"train": train_per_class, "test": test_per_class}
    chunks = list(_chunks(resolved, out, seed, counts, selected, max(1, chunk_size)))
    split_dirs = check_records(out, resolved, train_per_class, test_per_class)
    folders = [d / c for d in split_dirs for c in selected]
    for folder in folders:
        with atomic.writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
        atomic.sweep(folder)  # what a killed run left half-written
    for folder in split_dirs:
        _write_record(folder, resolved, seed)
    t0 = time.perf_counter()
    written = skipped = 0

    def account(result: tuple[int, int]) -> None:
        nonlocal written, skipped
        written += result[0]
        skipped += result[1]
        if progress is not None:
            progress(result[0] + result[1])

    n_workers = min(workers, max(1, len(chunks)))
    try:
        if n_workers == 1:
            for chunk in chunks:
                account(_run_chunk(chunk))
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(n_workers, initializer=_init_worker, initargs=(resolved,)) as pool:
                for result in pool.imap_unordered(_run_chunk, chunks):
                    account(result)
    except BaseException:
        # Workers stopped mid-file (the pool terminates them on an error) leave temporaries.
        for folder in folders:
            atomic.sweep(folder)
        raise
    seconds = time.perf_counter() - t0
    return {
        "model": spec.name,
        "out": str(out),
        "train_dir": str(split_dir(out, spec.name, "train")),
        "test_dir": str(split_dir(out, spec.name, "test")),
        "classes": list(selected),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "seed": seed,
        "overrides": resolved.overrides(),
        "recipe": resolved.as_dict(),
        "workers": n_workers,
        "written": written,
        "skipped": skipped,
        "seconds": seconds,
        "images_per_s": written / seconds if seconds > 0 and written else 0.0,
    }
