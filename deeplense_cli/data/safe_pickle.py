"""Parse the pickled payload of an object ``.npy`` file without running pickle code.

The released axion files are ``np.save(path, np.array([image, mass], dtype=object))``:
a pickle of an object ndarray. Unpickling it with :mod:`pickle` would let a crafted file
call any importable function (``os.system`` ...). Here :class:`RestrictedUnpickler`
admits only the few globals such a payload names, and each one is replaced by a
*recorder* that builds an inert placeholder instead of calling numpy on attacker data:

==========================================================  =========================
global in the pickle                                        recorded as
==========================================================  =========================
``numpy[._]core.multiarray._reconstruct`` (ndarray)          :class:`ArrayRecord`
``numpy.ndarray`` (argument of ``_reconstruct``)             a marker token
``numpy.dtype`` (+ ``BUILD`` state with the byte order)      :class:`DtypeRecord`
``numpy[._]core.multiarray.scalar`` (e.g. the mass)          :class:`ScalarRecord`
``numpy[._]core.numeric._frombuffer`` (pickle protocol 5)    :class:`ArrayRecord`
``_codecs.encode`` (bytes under pickle protocol 2)           ``bytes`` (latin-1 only)
==========================================================  =========================

:func:`materialize` then turns the records into real numpy objects with strict checks
(numeric or object dtypes only, data length must match the shape, bounded nesting).
Everything else -- any other global, persistent ids, out-of-band buffers -- is refused.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

from deeplense_cli.core.errors import DeepLenseError

_NUMERIC_KINDS = "biufc"
_MAX_DEPTH = 8


class UnsafePickleError(DeepLenseError):
    """The payload names a global that a plain numpy array never needs."""


class _Global:
    """What ``find_class`` hands out: a callable that refuses ``BUILD`` (no attribute writes)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        if self.fn is None:
            raise UnsafePickleError("numpy.ndarray called directly")
        return self.fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("refusing to modify a pickled global")


# ``numpy.ndarray`` is only ever an argument of ``_reconstruct``.
NDARRAY = _Global(None)


class DtypeRecord:
    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str) or len(spec) > 16:
            raise UnsafePickleError(f"unexpected dtype spec {spec!r}")
        self.spec = spec
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in "<>|=":
            raise UnsafePickleError("unexpected dtype state")
        if len(state) > 3 and (state[2] is not None or state[3] is not None):
            raise UnsafePickleError("structured or sub-array dtypes are not supported")
        self.byteorder = state[1]

    def resolve(self) -> np.dtype[Any]:
        try:
            dt = np.dtype(self.spec)
        except Exception:  # numpy raises several types for unparsable specs
            raise UnsafePickleError(f"unknown dtype {self.spec!r}") from None
        if dt.kind not in _NUMERIC_KINDS + "O" or dt.fields is not None or dt.subdtype:
            raise UnsafePickleError(f"dtype {dt} is not numeric")
        if dt.kind != "O" and self.byteorder in "<>":
            dt = dt.newbyteorder("<" if self.byteorder == "<" else ">")
        return dt


class ArrayRecord:
    def __init__(self, shape: Any = None, dtype: Any = None, data: Any = None, order: Any = "C"):
        self.shape = shape
        self.dtype = dtype
        self.data = data
        self.fortran = order == "F"

    def __setstate__(self, state: Any) -> None:
        # ndarray state: (version, shape, dtype, is_fortran, data) or without version
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("unexpected ndarray state")
        _, self.shape, self.dtype, fortran, self.data = state if len(state) == 5 else (1, *state)
        self.fortran = bool(fortran)


class ScalarRecord:
    def __init__(self, dtype: Any, data: Any = None) -> None:
        self.dtype = dtype
        self.data = data

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("unexpected numpy scalar state")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> ArrayRecord:
    if subtype is not NDARRAY:
        raise UnsafePickleError("_reconstruct of something other than numpy.ndarray")
    return ArrayRecord()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> ArrayRecord:
    return ArrayRecord(shape=shape, dtype=dtype, data=bytes(buf), order=order)


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("unexpected _codecs.encode call")
    return text.encode("latin-1")


_ALLOWED: dict[tuple[str, str], _Global] = {
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): _Global(DtypeRecord),
    ("_codecs", "encode"): _Global(_codecs_encode),
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _Global(_reconstruct)
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _Global(ScalarRecord)
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _Global(_frombuffer)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` admits only the recorders above."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing pickled global {module}.{name}: the file is not a plain numpy "
                "array and may contain code"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing pickled persistent id")


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > 8:
        raise UnsafePickleError("unexpected array shape")
    if not all(isinstance(n, int) and 0 <= n < 2**31 for n in shape):
        raise UnsafePickleError("unexpected array shape")
    return shape


def _dtype(obj: Any) -> np.dtype[Any]:
    if not isinstance(obj, DtypeRecord):
        raise UnsafePickleError("array without a dtype")
    return obj.resolve()


def materialize(obj: Any, depth: int = 0) -> Any:
    """Turn recorded objects into numpy arrays / scalars; plain Python values pass through."""
    if depth > _MAX_DEPTH:
        raise UnsafePickleError("pickled arrays nested too deeply")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, ScalarRecord):
        dt = _dtype(obj.dtype)
        if dt.kind == "O" or not isinstance(obj.data, bytes) or len(obj.data) != dt.itemsize:
            raise UnsafePickleError("malformed numpy scalar")
        return np.frombuffer(obj.data, dtype=dt)[0]
    if isinstance(obj, ArrayRecord):
        shape, dt = _shape(obj.shape), _dtype(obj.dtype)
        count = math.prod(shape)
        if dt.kind == "O":
            if not isinstance(obj.data, list) or len(obj.data) != count:
                raise UnsafePickleError("malformed object array")
            out = np.empty(count, dtype=object)
            for i, item in enumerate(obj.data):
                out[i] = materialize(item, depth + 1)
            return out.reshape(shape, order="F" if obj.fortran else "C")
        if not isinstance(obj.data, (bytes, bytearray)) or len(obj.data) != count * dt.itemsize:
            raise UnsafePickleError("array data does not match its shape")
        flat = np.frombuffer(bytes(obj.data), dtype=dt)
        return flat.reshape(shape, order="F" if obj.fortran else "C")
    if isinstance(obj, (list, tuple)) and len(obj) <= 16:
        return type(obj)(materialize(x, depth + 1) for x in obj)
    raise UnsafePickleError(f"unexpected pickled object of type {type(obj).__name__}")


def safe_loads(payload: bytes) -> Any:
    """Unpickle ``payload`` admitting only plain numpy arrays and scalars.

    Raises :class:`DeepLenseError` (or its subclass :class:`UnsafePickleError`) for anything
    else; never executes code named by the payload.
    """
    try:
        recorded = RestrictedUnpickler(io.BytesIO(payload)).load()
    except DeepLenseError:
        raise
    except Exception as exc:  # truncated or malformed pickles raise many types
        raise DeepLenseError(f"malformed pickle payload ({type(exc).__name__}: {exc})") from None
    try:
        return materialize(recorded)
    except DeepLenseError:
        raise
    except Exception as exc:
        raise DeepLenseError(f"malformed numpy payload ({type(exc).__name__}: {exc})") from None
