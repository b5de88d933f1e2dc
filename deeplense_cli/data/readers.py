"""Read one lensing image from a file: .npy, .npz, FITS, PNG or JPEG.

Every reader returns a single-channel image as a 2-D float32 array ``(H, W)`` plus the axion
mass when the file carries one. Anything wrong with a file -- truncated, corrupt, a crafted
pickle, the wrong shape, NaN/Inf pixels -- raises :class:`BadImageError` (a
:class:`DeepLenseError`) and nothing else.

Format rules
------------
* ``.npy``: a 2-D array, a 3-D array with one channel ``(1, H, W)`` or ``(H, W, 1)``, or the
  released axion layout, an object array ``[image, axion_mass]``. Object arrays are parsed by
  :mod:`deeplense_cli.data.safe_pickle`; ``np.load(allow_pickle=True)`` is never used.
* ``.npz``: the array named ``image``, else the one named ``x``, else the only array in the
  archive (several arrays and neither name -> error). An array named ``axion_mass`` (or
  ``mass``) holding one number is the axion mass.
* FITS (``.fits``, ``.fit``, ``.fts``, ``.fits.gz``): the primary HDU when it holds an image,
  else the first image extension.
* PNG / JPEG: colour images are converted to grayscale (one channel); 16-bit and float
  images keep their values.
"""

from __future__ import annotations

import math
import os
import stat
import threading
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

from deeplense_cli.core.atomic import sweep
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.safe_pickle import safe_loads

SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".npy",
    ".npz",
    ".fits",
    ".fit",
    ".fts",
    ".fits.gz",
    ".png",
    ".jpg",
    ".jpeg",
)
MAX_ARRAY_BYTES = 1 << 30  # refuse anything claiming to be larger than 1 GiB
MAX_SIDE = 16384


class BadImageError(DeepLenseError):
    """One file that cannot be used as an image; ``reason`` says why without the path."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class _Bad(Exception):
    """Internal: a reason, turned into BadImageError with the path by read_image."""


def has_supported_extension(path: str | os.PathLike[str]) -> bool:
    name = os.fspath(path).lower()
    return any(name.endswith(ext) for ext in SUPPORTED_EXTENSIONS)


def find_images(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files with a supported extension among ``inputs`` (folders searched recursively).

    Hidden files and folders (name starting with ``.``) are skipped. A named file with an
    unsupported extension, or a path that does not exist, is an error.
    """
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                sweep(dirpath)  # what killed commands left half-written here
                for fn in filenames:
                    if not fn.startswith(".") and has_supported_extension(fn):
                        found.add(Path(dirpath) / fn)
        elif path.exists() and not path.is_file():
            raise DeepLenseError(f"{path}: not a regular file (a FIFO, socket or device)")
        elif path.is_file():
            if not has_supported_extension(path):
                raise DeepLenseError(
                    f"{path}: unsupported file type; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
                )
            found.add(path)
        else:
            raise DeepLenseError(f"{path}: no such file or folder")
    return sorted(found)


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Read one file -> (image ``(H, W)`` float32, axion mass or None).

    Raises :class:`BadImageError` (a DeepLenseError) for any unusable file.
    """
    name = os.fspath(path).lower()
    try:
        _check_regular(path)
        if name.endswith(".npy"):
            with open(path, "rb") as fh:
                raw, mass = _read_npy(fh, allow_object=True)
        elif name.endswith(".npz"):
            raw, mass = _read_npz(path)
        elif name.endswith((".fits", ".fit", ".fts", ".fits.gz")):
            raw, mass = _read_fits(path), None
        elif name.endswith((".png", ".jpg", ".jpeg")):
            raw, mass = _read_pillow(path), None
        else:
            raise _Bad(f"unsupported file type; supported: {', '.join(SUPPORTED_EXTENSIONS)}")
        return _as_image(raw), mass
    except _Bad as exc:
        raise BadImageError(path, str(exc)) from None
    except BadImageError:
        raise
    except DeepLenseError as exc:
        raise BadImageError(path, str(exc)) from None
    except Exception as exc:  # corrupt files make third-party readers raise anything
        raise BadImageError(path, f"cannot read ({type(exc).__name__}: {exc})") from None


def read_npy(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Read a ``.npy`` file (a plain array or the axion ``[image, mass]`` object array)
    safely, keeping its dtype and shape: (array, axion mass or None)."""
    try:
        _check_regular(path)
        with open(path, "rb") as fh:
            raw, mass = _read_npy(fh, allow_object=True)
    except _Bad as exc:
        raise BadImageError(path, str(exc)) from None
    except OSError as exc:
        raise BadImageError(path, f"cannot read ({exc.strerror})") from None
    return np.asarray(raw), mass


_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


def _check_regular(path: str | os.PathLike[str]) -> None:
    """Refuse what is not a regular file before opening it: opening a FIFO blocks until a
    writer comes, and a device never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # open() reports it, with its reason
    if not stat.S_ISREG(mode):
        raise _Bad(f"not a regular file but {_KINDS.get(stat.S_IFMT(mode), 'a special file')}")


def as_image(array: Any, name: str | os.PathLike[str]) -> np.ndarray:
    """An in-memory array checked as a file's image is: ``(H, W)`` float32, or
    :class:`BadImageError` naming ``name`` (the same reasons as for a file)."""
    try:
        return _as_image(array)
    except _Bad as exc:
        raise BadImageError(name, str(exc)) from None


def _as_image(raw: Any) -> np.ndarray:
    if not isinstance(raw, np.ndarray):
        raise _Bad(f"holds a {type(raw).__name__}, not an image array")
    arr = raw
    if arr.dtype.kind not in "biuf":
        raise _Bad(f"dtype {arr.dtype} is not a real number type")
    if arr.ndim == 3:
        if arr.shape[0] == 1:
            arr = arr[0]
        elif arr.shape[-1] == 1:
            arr = arr[..., 0]
        else:
            raise _Bad(
                f"shape {arr.shape} has more than one channel; single-channel images are "
                "expected ((H, W), (1, H, W) or (H, W, 1))"
            )
    if arr.ndim != 2:
        raise _Bad(f"shape {arr.shape} is not a 2-D image")
    if min(arr.shape) < 2 or max(arr.shape) > MAX_SIDE:
        raise _Bad(f"image size {arr.shape[0]}x{arr.shape[1]} is out of range")
    with np.errstate(over="ignore", invalid="ignore"):
        img = np.ascontiguousarray(arr, dtype=np.float32)
    bad = int(img.size - np.count_nonzero(np.isfinite(img)))
    if bad:
        raise _Bad(f"{bad} pixel(s) are NaN or Inf (or too large for float32)")
    return img


# numpy parses .npy headers with ast.literal_eval, and CPython 3.11.7 keeps the AST converter's
# recursion depth in interpreter-wide state: two threads parsing at once (cache build, predict)
# can fail with "SystemError: AST constructor recursion depth mismatch". The lock is cheap.
_NPY_HEADER_LOCK = threading.Lock()


def read_npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """``(shape, fortran_order, dtype)`` of the .npy file at ``fh``'s position (any version);
    leaves ``fh`` at the start of the data. Raises what numpy raises on a malformed header."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    with _NPY_HEADER_LOCK:
        if version == (1, 0):
            return fmt.read_array_header_1_0(fh)
        if version == (2, 0):
            return fmt.read_array_header_2_0(fh)
        return fmt._read_array_header(fh, version)  # type: ignore[attr-defined]


def _read_npy(fh: IO[bytes], allow_object: bool) -> tuple[Any, float | None]:
    try:
        shape, fortran, dtype = read_npy_header(fh)
    except (ValueError, OSError, SyntaxError, TypeError) as exc:
        raise _Bad(f"not a valid .npy file ({exc})") from None
    if dtype.hasobject:
        if not allow_object or dtype.kind != "O":
            raise _Bad(f"unsupported dtype {dtype}")
        payload = fh.read(MAX_ARRAY_BYTES + 1)
        if len(payload) > MAX_ARRAY_BYTES:
            raise _Bad("object array is too large")
        return _axion_pair(safe_loads(payload))
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise _Bad(f"dtype {dtype} is not numeric")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise _Bad(f"array of shape {shape} is too large")
    data = fh.read(nbytes)
    if len(data) != nbytes:
        raise _Bad(f"truncated: {len(data)} of {nbytes} data bytes")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return arr, None


def _axion_pair(obj: Any) -> tuple[Any, float | None]:
    """The released axion layout: an object array ``[image, mass]`` (or just ``[image]``)."""
    if not isinstance(obj, np.ndarray):
        raise _Bad("object payload is not an array")
    if obj.dtype.kind != "O":
        return obj, None
    items = list(obj.ravel())
    if len(items) == 1 and isinstance(items[0], np.ndarray):
        return items[0], None
    if len(items) != 2 or not isinstance(items[0], np.ndarray):
        raise _Bad(f"object array with {len(items)} element(s); expected [image, axion_mass]")
    return items[0], _mass(items[1])


def _mass(value: Any) -> float:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise _Bad(f"axion mass is a {type(value).__name__}, not a number")
    try:
        mass = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _Bad("axion mass is not a real number") from None
    if not math.isfinite(mass):
        raise _Bad("axion mass is not finite")
    return mass


def _read_npz(path: str | os.PathLike[str]) -> tuple[Any, float | None]:
    with zipfile.ZipFile(path) as zf:
        members = {
            info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")
        }
        if not members:
            raise _Bad("the .npz archive holds no arrays")
        key: str | None = next((k for k in ("image", "x") if k in members), None)
        if key is None:
            candidates = [k for k in members if k not in ("axion_mass", "mass")]
            if len(candidates) != 1:
                raise _Bad(
                    f"the .npz archive holds arrays {sorted(members)}; name the image "
                    "'image' or 'x', or store a single array"
                )
            key = candidates[0]

        def load(k: str) -> Any:
            info = members[k]
            if info.file_size > MAX_ARRAY_BYTES + 4096:
                raise _Bad(f"array {k!r} is too large")
            with zf.open(info) as fh:
                return _read_npy(fh, allow_object=True)

        image, mass = load(key)
        for mkey in ("axion_mass", "mass"):
            if mkey in members and mkey != key:
                mass = _mass(load(mkey)[0])
                break
        return image, mass


def _read_fits(path: str | os.PathLike[str]) -> np.ndarray:
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                    continue
                naxis = int(hdu.header.get("NAXIS", 0))
                if naxis == 0:
                    continue
                dims = [int(hdu.header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
                bitpix = abs(int(hdu.header.get("BITPIX", 8)))
                if math.prod(dims) * max(bitpix // 8, 1) > MAX_ARRAY_BYTES:
                    raise _Bad(f"FITS image of size {dims} is too large")
                data = hdu.data
                if data is not None:
                    return np.array(data)
    raise _Bad("the FITS file holds no image HDU")


def _read_pillow(path: str | os.PathLike[str]) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            if im.width * im.height > MAX_SIDE * MAX_SIDE // 4:
                raise _Bad(f"image of {im.width}x{im.height} pixels is too large")
            im.load()
            if im.mode in ("L", "I", "F", "1") or im.mode.startswith("I;16"):
                return np.array(im)
            return np.array(im.convert("L"))
