"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The temporary file is made in the destination's own folder (so ``os.replace`` never crosses
a filesystem), named ``.NAME.XXXXXXXX[SUFFIX].tmp``, and its writer holds an ``flock`` on it
until it is renamed: :func:`sweep` removes the temporaries whose writer died (SIGKILL, power
loss) and never one that is being written. A destination that is full, read-only or not
writable becomes one :class:`WriteError` naming the file and the device.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from deeplense_cli.core.errors import DeepLenseError

# The destination's faults: the user can fix them, a traceback would not help.
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EXDEV, errno.EFBIG}
)
# mkstemp/mkdtemp names: prefix ".NAME.", 8 characters of [a-z0-9_], suffix, ".tmp".
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?:\.[A-Za-z0-9]+)?\.tmp$")
# Where a filesystem cannot lock (flock fails), a temporary this old counts as abandoned.
_UNLOCKED_STALE_S = 3600.0
# A non-OSError failure (torch.save reports ENOSPC as "unexpected pos") with less than this
# free on the destination is taken for a full disk.
_NEARLY_FULL_BYTES = 1 << 20


def _default_mode() -> int:
    # mkstemp creates 0600 files; finished files get the usual mode (0666 minus the umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _default_mode()


class WriteError(DeepLenseError):
    """Writing a file failed because of its destination (full, read-only, not writable)."""


# ---- temporaries --------------------------------------------------------------------------
def _lock(fd: int, blocking: bool) -> bool | None:
    """flock ``fd``: True when locked, False when another process holds it, None when this
    filesystem cannot lock. (On NFS, flock is a POSIX lock, which the writer's own closing of
    another descriptor of the file drops: there a sweep racing a write can still win.)"""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _new_temp(target: Path, suffix: str, folder: bool) -> tuple[int, Path]:
    """A new temporary file (or folder) beside ``target``, locked: (open fd, path). Makes
    the target's folder if need be."""
    try:
        return _new_temp_in_place(target, suffix, folder)
    except FileNotFoundError:  # (first) the common case costs no mkdir
        target.parent.mkdir(parents=True, exist_ok=True)
        return _new_temp_in_place(target, suffix, folder)


def _new_temp_in_place(target: Path, suffix: str, folder: bool) -> tuple[int, Path]:
    while True:
        prefix, end = f".{target.name}.", f"{suffix}.tmp"
        if folder:
            path = Path(tempfile.mkdtemp(prefix=prefix, suffix=end, dir=target.parent))
            fd = os.open(path, os.O_RDONLY)
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=end, dir=target.parent)
            path = Path(name)
        _lock(fd, blocking=True)
        # A sweep may have removed it between its creation and our lock: make another.
        if os.fstat(fd).st_nlink > 0:
            return fd, path
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep(folder: str | os.PathLike[str], name: str | None = None) -> int:
    """Remove the abandoned temporaries in ``folder`` (of target ``name`` only, if given):
    files and folders named like ours whose writer is gone. Returns how many went.

    Never raises: a folder that is missing or cannot be written keeps its leftovers.
    """
    return len(_abandoned(folder, name, remove=True))


def sweep_tree(
    tree: str | os.PathLike[str], remove: bool = True, max_depth: int | None = None
) -> list[tuple[Path, int]]:
    """The abandoned temporaries in ``tree`` and its sub-folders (``max_depth`` levels down;
    links not followed), with their sizes in bytes; removed unless ``remove`` is false."""
    top = Path(tree)
    found: list[tuple[Path, int]] = []
    for dirpath, dirnames, _ in os.walk(top, onerror=lambda _: None):
        here = Path(dirpath)
        found += _abandoned(here, None, remove)
        depth = len(here.relative_to(top).parts)
        # a temporary folder is one leftover, not a tree to look into
        dirnames[:] = [
            d
            for d in dirnames
            if not _TEMP_NAME.match(d) and (max_depth is None or depth < max_depth)
        ]
    return found


def _size(path: str) -> int:
    try:
        if not os.path.isdir(path):
            return os.lstat(path).st_size
        return sum(
            os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files
        )
    except OSError:
        return 0


def _abandoned(
    folder: str | os.PathLike[str], name: str | None, remove: bool
) -> list[tuple[Path, int]]:
    found: list[tuple[Path, int]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or (name is not None and m.group("name") != name):
            continue
        if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            held = _lock(fd, blocking=False)
            if held is None:  # no locks here: only what is clearly old
                held = time.time() - os.fstat(fd).st_mtime > _UNLOCKED_STALE_S
            if held:  # we hold the lock: its writer is dead
                size = _size(entry.path)
                if remove:
                    _remove(Path(entry.path))
                found.append((Path(entry.path), size))
        except OSError:
            pass
        finally:
            os.close(fd)
    return found


# ---- destination faults -------------------------------------------------------------------
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def destination_fault(exc: BaseException) -> OSError | None:
    """The OSError of a destination fault in ``exc`` or what caused it."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return e
    return None


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_of(path: str | os.PathLike[str]) -> tuple[str, Path]:
    """(device, mount point) of the filesystem ``path`` is (or would be) on, like df."""
    here = _existing(Path(path))
    try:
        dev = os.stat(here).st_dev
        while here != here.parent and os.stat(here.parent).st_dev == dev:
            here = here.parent
    except OSError:
        return "the disk", here
    device = "the disk"
    with contextlib.suppress(OSError), open("/proc/self/mounts") as fh:
        for line in fh:  # "DEVICE MOUNTPOINT TYPE ..." with spaces as \040
            fields = line.split()
            if len(fields) > 2 and _unescape(fields[1]) == str(here):
                device = _unescape(fields[0])  # the last mount there wins
    return device, here


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _nearly_full(path: Path) -> bool:
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return False
    # f_blocks 0: a filesystem that reports no sizes (some FUSE ones), which says nothing
    return st.f_blocks > 0 and st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES


def _ours(filename: Any, target: Path) -> bool:
    """Whether an OSError's file name is ``target``, one of its temporaries (or a file in a
    temporary folder of it), or a folder on the way to it."""
    if filename is None:
        return True
    p = Path(os.path.abspath(os.fsdecode(filename)))
    t = Path(os.path.abspath(target))
    if p == t or p in t.parents:
        return True
    return any(
        (m := _TEMP_NAME.match(q.name)) is not None and m.group("name") == t.name
        for q in (p, p.parent)
    )


def _target_of(path: Path) -> str:
    """The file a temporary (or a file in a temporary folder) stands for: its name would
    only puzzle."""
    for temp in (path, path.parent):
        if m := _TEMP_NAME.match(temp.name):
            return str(temp.parent / m.group("name"))
    return str(path)


def fault_message(
    err: OSError, path: str | os.PathLike[str] | None = None, hint: str | None = None
) -> str:
    """One line for destination fault ``err`` while writing ``path``; without ``path`` (the
    last resort, which does not know what was being written) about ``err.filename``.
    ``hint`` is where else to write, said instead of the usual advice (a full disk is also
    told to free some space; a read-only one is not)."""
    named = path if path is not None else err.filename
    shown = os.fsdecode(named) if named is not None else None
    if shown is not None:
        shown = _target_of(Path(shown))
    on = "a device"
    if shown is not None:
        device, mount = mount_of(shown)
        on = f"{device} ({mount})"
    what = f" while writing {shown}" if shown else ""
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        full = "no space left" if code == errno.ENOSPC else "disk quota exceeded"
        advice = f"free some space{' there' if shown else ''} or {hint or 'write elsewhere'}"
        return f"{full} on {on}{what}; {advice}"
    if code == errno.EROFS:
        return f"cannot write {shown or 'there'}: {on} is read-only; {hint or 'write elsewhere'}"
    if code == errno.EFBIG:
        return f"{shown or 'a file'} is too large for {on}; {hint or 'write it elsewhere'}"
    if code == errno.EXDEV:
        return f"cannot move a temporary file into {shown}: it is on another filesystem"
    if path is None:  # the last resort cannot tell a read from a write
        return f"permission denied: {shown}; check its permissions or use another place"
    denied = os.fsdecode(err.filename) if err.filename is not None else shown
    if denied is not None and _target_of(Path(denied)) != denied:
        denied = str(Path(_target_of(Path(denied))).parent)  # the folder of our temporary
    on_what = f" on {denied}" if denied and denied != shown else ""
    advice = hint or "choose a folder you can write to"
    return f"cannot write {shown}: permission denied{on_what}; {advice}"


def write_failure(
    exc: BaseException, path: str | os.PathLike[str], hint: str | None = None
) -> WriteError | None:
    """A :class:`WriteError` when ``exc``, raised while writing ``path``, is the destination's
    fault (full, read-only, not writable, another filesystem); None otherwise."""
    if isinstance(exc, WriteError):
        return exc
    target = Path(path)
    err = destination_fault(exc)
    if err is not None:
        if not _ours(err.filename, target):
            return None  # about another file (an input, say): not this write's fault
        return WriteError(fault_message(err, target, hint))
    # Our own messages are never second-guessed; other failures on a full disk are its fault.
    if not isinstance(exc, DeepLenseError) and _nearly_full(target.parent):
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return WriteError(fault_message(full, target, hint))
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], hint: str | None = None) -> Iterator[None]:
    """Turn a destination fault raised in the block into a WriteError naming ``path``."""
    try:
        yield
    except Exception as exc:
        failure = write_failure(exc, path, hint)
        if failure is None or failure is exc:
            raise
        raise failure from None


# ---- writers ------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], suffix: str = "", durable: bool = True
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched; a destination
    fault (see :func:`write_failure`) is raised as a WriteError. ``durable=False`` skips the
    fsync (a power loss may then leave a damaged file, which the caller must detect).
    """
    target = Path(path)
    with writing(target):
        fd, tmp = _new_temp(target, suffix, folder=False)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, target)
    except BaseException as exc:
        # judged before the temporary goes: a full disk is still full then
        failure = write_failure(exc, target) if isinstance(exc, Exception) else None
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if failure is None or failure is exc:
            raise
        raise failure from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def temp_folder(
    beside: str | os.PathLike[str], suffix: str = "", hint: str | None = None
) -> Iterator[Path]:
    """A temporary folder beside ``beside`` (same filesystem, named for it), removed
    afterwards; the caller may rename things out of it. Destination faults raised in the
    block become a WriteError naming ``beside`` (``hint``: what to do)."""
    target = Path(beside)
    with writing(target, hint):
        fd, tmp = _new_temp(target, suffix, folder=True)
    try:
        yield tmp
    except Exception as exc:
        failure = write_failure(exc, target, hint)  # before the folder's space is freed
        if failure is None or failure is exc:
            raise
        raise failure from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` atomically on close."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
