"""A class-per-folder image tree, packed once into a memory-mapped cache.

``load_image_set(folder)`` reads ``folder/<class>/**/<file>`` (hidden names skipped, class
folders sorted by name), checks every file, and writes a compact cache::

    <cache root>/<sha256(absolute folder)[:16]>/<manifest digest>/
        images.npy      float32 (N, 1, H, W), opened with mmap_mode="r"
        labels.npy      int64 (N,), indices into meta["classes"]
        axion_mass.npy  float64 (N,), NaN where the file carries none
        stats.npy       float64 (N, 3): min, max, mean of each image
        meta.json       files, classes, bad files and reasons, source dtypes, manifest

The cache root is ``deeplense_cli.core.paths.home()/cache`` unless ``cache_dir`` is given. The
manifest digest covers every file's relative path, size and mtime_ns, so adding, removing or
touching a file makes a new cache; the folder's older caches are then deleted. A cache is
built in a temporary folder and renamed into place, so readers never see half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deeplense_cli.core import atomic, paths
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.readers import (
    BadImageError,
    has_supported_extension,
    read_image,
    read_npy_header,
)

CACHE_VERSION = 1
CACHE_HINT = "point DEEPLENSE_HOME somewhere writable"
SHOW_BAD = 5
Progress = Callable[[int, int], None]


@dataclass
class ImageSet:
    """Images of one folder, labelled by class folder. ``images`` is memory-mapped."""

    images: np.ndarray  # (N, C, H, W) float32
    labels: np.ndarray  # (N,) int64 indices into classes
    classes: list[str]
    files: list[str]  # relative to root, "/"-separated
    axion_mass: np.ndarray  # (N,) float64, NaN where none
    root: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # bad files left out: (file, why)
    warnings: list[str] = field(default_factory=list)  # what skip_bad left out, for the CLI
    stats: np.ndarray | None = None  # (N, 3) min, max, mean per image
    source_dtypes: dict[str, int] = field(default_factory=dict)
    cache_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.images.shape[1:])

    def counts(self, idx: np.ndarray | None = None) -> dict[str, int]:
        """Images per class (over ``idx`` when given)."""
        labels = self.labels if idx is None else self.labels[idx]
        per = np.bincount(labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, per, strict=True)}


def default_cache_root() -> Path:
    return paths.home() / "cache"


def folder_cache_dir(folder: str | os.PathLike[str], cache_dir: Path | None = None) -> Path:
    """Where the caches of ``folder`` live (one sub-folder per manifest)."""
    absolute = os.path.abspath(os.fspath(folder))
    key = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return (Path(cache_dir) if cache_dir is not None else default_cache_root()) / key


@dataclass
class _Scan:
    class_dirs: list[str]
    files: list[str]  # relative, "/"-separated, grouped by class then sorted
    file_class: list[int]
    manifest: list[tuple[str, int, int]]
    loose: int  # supported files directly in the root (ignored)

    def digest(self) -> str:
        h = hashlib.sha256(f"deeplense-cache-v{CACHE_VERSION}\n".encode())
        h.update(("\n".join(self.class_dirs) + "\n\n").encode("utf-8", "surrogateescape"))
        for rel, size, mtime in self.manifest:
            h.update(f"{rel}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:20]


def _scan(root: Path) -> _Scan:
    if not root.is_dir():
        raise DeepLenseError(f"{root} is not a folder")
    class_dirs: list[str] = []
    loose = 0
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DeepLenseError(f"cannot list {root}: {exc.strerror or exc}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            class_dirs.append(entry.name)
        elif has_supported_extension(entry.name):
            loose += 1
    files: list[str] = []
    file_class: list[int] = []
    manifest: list[tuple[str, int, int]] = []
    for ci, cname in enumerate(class_dirs):
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root / cname):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            atomic.sweep(dirpath)  # what killed commands left half-written here
            rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
            found.extend(
                f"{rel_dir}/{fn}"
                for fn in filenames
                if not fn.startswith(".") and has_supported_extension(fn)
            )
        for rel in sorted(found):
            try:
                st = os.stat(root / rel)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:  # e.g. a dangling link: reported as a bad file when read
                size, mtime = -1, 0
            files.append(rel)
            file_class.append(ci)
            manifest.append((rel, size, mtime))
    return _Scan(class_dirs, files, file_class, manifest, loose)


def _reference_shape(root: Path, files: list[str], sample: int = 64) -> tuple[int, int] | None:
    """The most common image shape among up to ``sample`` evenly spread files."""
    if not files:
        return None
    picks = sorted({int(i) for i in np.linspace(0, len(files) - 1, min(sample, len(files)))})
    shapes: Counter[tuple[int, int]] = Counter()
    for i in picks:
        with contextlib.suppress(BadImageError):
            img, _ = read_image(root / files[i])
            shapes[(int(img.shape[0]), int(img.shape[1]))] += 1
    return shapes.most_common(1)[0][0] if shapes else None


def read_workers() -> int:
    """Threads reading files while a cache is built (``DEEPLENSE_READ_WORKERS``, default 4)."""
    try:
        wanted = int(os.environ.get("DEEPLENSE_READ_WORKERS", "4"))
    except ValueError:
        wanted = 4
    return max(1, min(wanted, os.cpu_count() or 1))


_Read = tuple[np.ndarray | None, float | None, str | None]


def _try_read(path: Path) -> _Read:
    try:
        img, mass = read_image(path)
    except BadImageError as exc:
        return None, None, exc.reason
    return img, mass, None


def _read_in_order(files: list[Path], workers: int) -> Iterator[_Read]:
    """Read ``files`` in order, ``workers`` threads ahead (bounded, so memory stays small)."""
    if workers <= 1:
        yield from map(_try_read, files)
        return
    # Not `with`: its exit waits for every running read, and one read that hangs (a network
    # filesystem) would then hold Ctrl+C; the CLI ends without waiting for such threads.
    pool = ThreadPoolExecutor(workers, thread_name_prefix="deeplense-read")
    pending: deque[Future[_Read]] = deque()
    try:
        ahead = iter(files)
        for path in itertools.islice(ahead, 4 * workers):
            pending.append(pool.submit(_try_read, path))
        while pending:
            result = pending.popleft().result()
            nxt = next(ahead, None)
            if nxt is not None:
                pending.append(pool.submit(_try_read, nxt))
            yield result
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _build_cache(root: Path, scan: _Scan, target: Path, progress: Progress | None) -> None:
    with atomic.writing(target.parent, CACHE_HINT):
        target.parent.mkdir(parents=True, exist_ok=True)
    atomic.sweep(target.parent)  # caches half-built by a killed process
    with atomic.temp_folder(target, hint=CACHE_HINT) as tmp:
        _write_cache(root, scan, tmp, progress)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():
                raise
            # another process built it first; the temporary folder goes with the block
    for old in target.parent.iterdir():  # older manifests of the same folder
        if old != target and not old.name.startswith("."):  # hidden: being built
            shutil.rmtree(old, ignore_errors=True)


def _write_cache(root: Path, scan: _Scan, out: Path, progress: Progress | None) -> None:
    fmt = np.lib.format
    total = len(scan.files)
    ref = _reference_shape(root, scan.files)
    files: list[str] = []
    labels: list[int] = []
    masses: list[float] = []
    stats: list[tuple[float, float, float]] = []
    bad: list[tuple[str, str]] = []
    dtypes: Counter[str] = Counter()
    with open(out / "images.npy", "wb") as fh:

        def header(n: int, shape: tuple[int, int]) -> dict[str, Any]:
            return {"descr": "<f4", "fortran_order": False, "shape": (n, 1, *shape)}

        header_len = None
        reads = _read_in_order([root / rel for rel in scan.files], read_workers())
        for i, (rel, ci, (img, mass, reason)) in enumerate(
            zip(scan.files, scan.file_class, reads, strict=True)
        ):
            if img is None:
                bad.append((rel, reason or "unreadable"))
            else:
                if ref is None:
                    ref = (int(img.shape[0]), int(img.shape[1]))
                if img.shape != ref:
                    bad.append(
                        (
                            rel,
                            f"size {img.shape[0]}x{img.shape[1]} differs from the dataset's "
                            f"{ref[0]}x{ref[1]}",
                        )
                    )
                else:
                    if header_len is None:
                        fmt.write_array_header_1_0(fh, header(total, ref))
                        header_len = fh.tell()
                    fh.write(img.astype("<f4", copy=False).tobytes())
                    files.append(rel)
                    labels.append(ci)
                    masses.append(np.nan if mass is None else mass)
                    stats.append((float(img.min()), float(img.max()), float(img.mean())))
                    dtypes[_source_dtype(root / rel)] += 1
            if progress is not None:
                progress(i + 1, total)
        shape = ref or (0, 0)
        if header_len is None:
            fmt.write_array_header_1_0(fh, header(0, shape))
        elif len(files) != total:  # rewrite the count; numpy pads headers so the length holds
            fh.seek(0)
            fmt.write_array_header_1_0(fh, header(len(files), shape))
            if fh.tell() != header_len:
                raise RuntimeError("cache header changed length")
            fh.truncate(header_len + len(files) * 4 * shape[0] * shape[1])
    np.save(out / "labels.npy", np.asarray(labels, dtype=np.int64))
    np.save(out / "axion_mass.npy", np.asarray(masses, dtype=np.float64))
    np.save(out / "stats.npy", np.asarray(stats, dtype=np.float64).reshape(-1, 3))
    meta = {
        "version": CACHE_VERSION,
        "root": str(root.resolve()),
        "classes": scan.class_dirs,
        "files": files,
        "bad": bad,
        "scanned": total,
        "loose_files": scan.loose,
        "source_dtypes": dict(dtypes),
        "image_shape": [1, *shape],
        "folder_counts": dict(Counter(scan.class_dirs[c] for c in scan.file_class)),
    }
    (out / "meta.json").write_text(json.dumps(meta))


def _source_dtype(path: Path) -> str:
    """The stored dtype of an image file (cheap: .npy header only; others by suffix)."""
    name = path.name.lower()
    if name.endswith(".npy"):
        with contextlib.suppress(Exception), open(path, "rb") as fh:
            _, _, dt = read_npy_header(fh)
            return "object [image, axion_mass]" if dt.hasobject else str(dt)
        return "npy"
    for suffix, label in ((".npz", "npz"), (".png", "png"), (".jpg", "jpeg"), (".jpeg", "jpeg")):
        if name.endswith(suffix):
            return label
    return "fits"


def _bad_message(root: Path, bad: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{rel}: {why}" for rel, why in bad[:SHOW_BAD])
    more = f" (first {SHOW_BAD} shown)" if len(bad) > SHOW_BAD else ""
    return (
        f"{len(bad)} bad file(s) in {root}{more}: {shown}. "
        "Fix or remove them, or pass --skip-bad to leave them out."
    )


def load_image_set(
    folder: str | os.PathLike[str],
    classes: list[str] | None = None,
    skip_bad: bool = False,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> ImageSet:
    """Load a class-per-folder tree (building or reusing its memory-mapped cache).

    ``classes``: the class names the caller expects (e.g. the training set's); the folder
    must have exactly these classes, and labels follow this order. ``skip_bad``: leave bad
    files (and classes left without images) out instead of raising; they are listed in
    ``ImageSet.skipped`` / ``ImageSet.warnings``. ``progress(done, total)`` is called while a
    cache is built.
    """
    root = Path(folder).expanduser()
    scan = _scan(root)
    target = folder_cache_dir(root, cache_dir) / scan.digest()
    meta_path = target / "meta.json"
    meta: dict[str, Any] | None = None
    if meta_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            meta = json.loads(meta_path.read_text())
        if meta is not None and meta.get("version") != CACHE_VERSION:
            meta = None
    if meta is None:
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            _build_cache(root, scan, target, progress)
        except OSError as exc:
            raise DeepLenseError(
                f"cannot write the image cache in {target.parent} ({exc}); {CACHE_HINT} "
                "with free space"
            ) from None
        meta = json.loads(meta_path.read_text())
    return _open_cache(root, target, meta, classes, skip_bad)


def _open_cache(
    root: Path,
    target: Path,
    meta: dict[str, Any],
    classes: list[str] | None,
    skip_bad: bool,
) -> ImageSet:
    all_classes: list[str] = list(meta["classes"])
    bad = [(str(a), str(b)) for a, b in meta["bad"]]
    labels = np.load(target / "labels.npy")
    per_class = np.bincount(labels, minlength=len(all_classes))
    folder_counts: dict[str, int] = meta.get("folder_counts", {})
    if not all_classes:
        hint = (
            f" ({meta['loose_files']} image files lie directly in it)"
            if meta["loose_files"]
            else ""
        )
        raise DeepLenseError(
            f"{root} has no class folders{hint}; put the images in one sub-folder per class, "
            "e.g. ROOT/axion/*.npy, ROOT/cdm/*.npy, ROOT/no_sub/*.npy"
        )
    empty = [c for c in all_classes if folder_counts.get(c, 0) == 0]
    emptied = [c for c, n in zip(all_classes, per_class, strict=True) if n == 0 and c not in empty]
    problems: list[str] = []
    if empty:
        problems.append(f"class folder(s) without image files: {', '.join(empty)}")
    if emptied:
        problems.append(f"class(es) whose files are all bad: {', '.join(emptied)}")
    if not skip_bad:
        if bad:
            raise DeepLenseError(_bad_message(root, bad))
        if problems:
            raise DeepLenseError(
                f"{root}: {'; '.join(problems)}. Add images, remove those folders, "
                "or pass --skip-bad to leave them out."
            )
    warn: list[str] = []
    if bad:
        warn.append(f"skipped {len(bad)} bad file(s) in {root} (first: {bad[0][0]}: {bad[0][1]})")
    warn.extend(f"{root}: left out {p}" for p in problems)
    kept = [c for c, n in zip(all_classes, per_class, strict=True) if n > 0]
    if not kept:
        raise DeepLenseError(
            f"{root} holds no usable images (supported: .npy .npz .fits .png .jpg); "
            "check the path or simulate/download a dataset"
        )
    if classes is not None:
        expected = list(classes)
        if sorted(expected) != sorted(kept):
            raise DeepLenseError(
                f"{root} has classes {kept} but {expected} were expected; "
                "the class folders must match"
            )
        order = expected
    else:
        order = kept
    remap = np.full(len(all_classes), -1, dtype=np.int64)
    for i, c in enumerate(order):
        remap[all_classes.index(c)] = i
    images = np.load(target / "images.npy", mmap_mode="r")
    return ImageSet(
        images=images,
        labels=remap[labels],
        classes=order,
        files=list(meta["files"]),
        axion_mass=np.load(target / "axion_mass.npy"),
        root=root,
        skipped=bad if skip_bad else [],
        warnings=warn,
        stats=np.load(target / "stats.npy"),
        source_dtypes=dict(meta.get("source_dtypes", {})),
        cache_dir=target,
    )
