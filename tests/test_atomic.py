"""Atomic writes: all or nothing, with ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deeplense_cli.core import atomic


def test_write_replaces_whole_file_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.json"
    atomic.write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_failure_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_open(target) as fh:
        fh.write("half of a new file")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_the_temporary_file_is_beside_the_target(tmp_path: Path) -> None:
    # the same folder, so the same filesystem: os.replace never crosses one (EXDEV)
    target = tmp_path / "out" / "model.onnx"
    with atomic.atomic_path(target, suffix=".onnx") as tmp:
        assert tmp.parent == target.parent and atomic.sweep(target.parent) == 0
        tmp.write_text("new")
    with atomic.temp_folder(target) as work:
        assert work.parent == target.parent and work.is_dir()
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]


WRITER = """
import sys, time
from deeplense_cli.core import atomic
with atomic.atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half of it")
    print(tmp.name, flush=True)
    time.sleep(120)
"""


def test_sweep_removes_a_killed_writers_temporary_and_never_a_live_ones(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    target = tmp_path / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        name = proc.stdout.readline().strip()
        assert (tmp_path / name).is_file()
        assert atomic.sweep(tmp_path) == 0  # its writer holds it
        assert (tmp_path / name).is_file()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert (tmp_path / name).is_file()  # what SIGKILL leaves
        assert atomic.sweep(tmp_path, "other.pt") == 0  # another target's
        assert atomic.sweep(tmp_path) == 1
        assert list(tmp_path.iterdir()) == []
    finally:
        proc.kill()
        proc.wait()


def test_sweep_removes_only_our_own_names(tmp_path: Path) -> None:
    keep = [".notes.tmp", "data.tmp", ".x.ABCDEFGH.tmp", ".x.abcdefgh.tmp.bak", "x.abcdefgh.tmp"]
    for name in keep:
        (tmp_path / name).write_text("user's")
    (tmp_path / ".x.abc_1234.tmp").write_text("ours, abandoned")
    (tmp_path / ".m.onnx.abcd1234.tmp").mkdir()  # an abandoned work folder
    (tmp_path / ".m.onnx.abcd1234.tmp" / "fp32.onnx").write_text("half")
    assert atomic.sweep(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_write_failure_blames_the_destination_only_for_its_own_files(tmp_path: Path) -> None:
    import errno

    target = tmp_path / "out" / "p.csv"
    mine = PermissionError(
        errno.EACCES, "Permission denied", str(tmp_path / "out" / ".p.csv.abcd1234.tmp")
    )
    failure = atomic.write_failure(mine, target)
    assert failure is not None
    assert str(failure).startswith(
        f"cannot write {target}: permission denied on {tmp_path / 'out'}"
    )
    an_input = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "image.npy"))
    assert atomic.write_failure(an_input, target) is None
    # torch.save on a full disk: a RuntimeError whose context is the OSError
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("unexpected pos 704 vs 598") from None
    except RuntimeError as exc:
        failure = atomic.write_failure(exc, target)
    assert failure is not None and str(failure).startswith("no space left on ")
    assert f"while writing {target};" in str(failure)


def test_mount_of_finds_the_filesystem_like_df() -> None:
    device, mount = atomic.mount_of("/proc/self/status")
    assert (device, mount) == ("proc", Path("/proc"))
    assert atomic.mount_of("/no/such/folder/file")[1] == Path("/")
