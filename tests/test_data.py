"""Datasets: readers, the safe unpickler, the memory-mapped cache, splits, info/show commands."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data import (
    SUPPORTED_EXTENSIONS,
    DataSource,
    ImageSet,
    find_images,
    load_image_set,
    make_splits,
    read_image,
    resolve_source,
)
from deeplense_cli.data.safe_pickle import safe_loads

CLASSES = ["axion", "cdm", "no_sub"]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DEEPLENSE_HOME", str(home))
    monkeypatch.delenv("DEEPLENSE_DATA_ROOT", raising=False)
    return home


def save_axion(path: Path, image: np.ndarray, mass: float) -> None:
    np.save(path, np.array([image, mass], dtype=object), allow_pickle=True)


def write_tree(
    root: Path, classes: list[str] = CLASSES, n: int = 6, size: int = 16, seed: int = 0
) -> dict[str, tuple[np.ndarray, float | None]]:
    """A small dataset in the released layout; returns {relative path: (image, mass)}."""
    rng = np.random.default_rng(seed)
    written: dict[str, tuple[np.ndarray, float | None]] = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.random((size, size))
            rel = f"{c}/{c}_sim_{rng.integers(2**62)}_{i}.npy"
            if c == "axion":
                mass = float(10 ** rng.uniform(-24, -22))
                save_axion(root / rel, img, mass)
                written[rel] = (img, mass)
            else:
                np.save(root / rel, img)
                written[rel] = (img, None)
    return written


# --------------------------------------------------------------------------- readers


def test_read_released_layout_npy_and_axion(tmp_path: Path) -> None:
    img = np.random.default_rng(1).random((64, 64))
    np.save(tmp_path / "cdm.npy", img)
    save_axion(tmp_path / "axion.npy", img, 3.5e-23)
    out, mass = read_image(tmp_path / "cdm.npy")
    assert out.shape == (64, 64) and out.dtype == np.float32 and mass is None
    np.testing.assert_allclose(out, img.astype(np.float32))
    out, mass = read_image(tmp_path / "axion.npy")
    assert mass == pytest.approx(3.5e-23)
    np.testing.assert_allclose(out, img.astype(np.float32))


def test_real_samples_read(real_samples: Path) -> None:
    for name in ("no_sub", "cdm", "axion"):
        img, _ = read_image(real_samples / f"{name}.npy")
        assert img.shape == (64, 64) and float(img.max()) == pytest.approx(1.0)


def _old_numpy_axion_file(path: Path, image: np.ndarray, mass: float) -> None:
    """An axion file as numpy 1.x wrote it (numpy.core globals), pickle protocol 2."""
    arr = np.array([image, np.float64(mass)], dtype=object)
    payload = pickle.dumps(arr, protocol=2).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in payload and b"_codecs" in payload
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "|O", "fortran_order": False, "shape": (2,)}
        )
        fh.write(payload)


def test_axion_file_written_by_old_numpy(tmp_path: Path) -> None:
    img = np.arange(64, dtype=np.float64).reshape(8, 8)
    _old_numpy_axion_file(tmp_path / "old.npy", img, 2e-24)
    out, mass = read_image(tmp_path / "old.npy")
    np.testing.assert_array_equal(out, img.astype(np.float32))
    assert mass == pytest.approx(2e-24)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    # the payload is real: plain pickle would run it
    pickle.loads(pickle.dumps(_Evil(proof)))
    assert proof.exists()

    marker = tmp_path / "pwned"
    evil_file = tmp_path / "axion_sim_1.npy"
    np.save(evil_file, np.array([np.zeros((8, 8)), _Evil(marker)], dtype=object), allow_pickle=True)
    bare = tmp_path / "bare.npy"
    with open(bare, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "|O", "fortran_order": False, "shape": (2,)}
        )
        fh.write(pickle.dumps(_Evil(marker)))
    for path in (evil_file, bare):
        with pytest.raises(DeepLenseError, match=r"refusing pickled global (posix|os)\.system"):
            read_image(path)
    assert not marker.exists()

    # inside a dataset: reported as a bad file, skipped with skip_bad, never executed
    root = tmp_path / "ds"
    write_tree(root, n=3)
    (root / "axion" / "evil.npy").write_bytes(evil_file.read_bytes())
    with pytest.raises(DeepLenseError, match=r"1 bad file.*axion/evil.npy: refusing"):
        load_image_set(root)
    assert len(load_image_set(root, skip_bad=True)) == 9
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(Path("/etc")),  # pathlib global
        pickle.dumps({"a": 1}),  # a dict is not an array
        pickle.dumps(np.array(["a", "b"])),  # unicode dtype
        pickle.dumps(np.zeros(2, dtype=[("a", "f4")])),  # structured dtype
    ],
)
def test_safe_loads_refuses_non_arrays(payload: bytes) -> None:
    with pytest.raises(DeepLenseError):
        safe_loads(payload)


def test_shapes_channels_and_bad_values(tmp_path: Path) -> None:
    img = np.random.default_rng(2).random((10, 12)).astype(np.float32)
    np.save(tmp_path / "chw.npy", img[None])
    np.save(tmp_path / "hwc.npy", img[..., None])
    np.save(tmp_path / "int.npy", (img * 100).astype(np.uint16))
    for name in ("chw.npy", "hwc.npy"):
        np.testing.assert_array_equal(read_image(tmp_path / name)[0], img)
    assert read_image(tmp_path / "int.npy")[0].dtype == np.float32
    cases = {
        "rgb.npy": (np.zeros((3, 10, 10)), "more than one channel"),
        "vec.npy": (np.zeros(10), "not a 2-D image"),
        "nan.npy": (np.full((4, 4), np.nan), "NaN or Inf"),
        "inf.npy": (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or Inf"),
        "big.npy": (np.full((4, 4), 1e300), "NaN or Inf"),
        "cplx.npy": (np.zeros((4, 4), complex), "not a real number"),
    }
    for name, (arr, why) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(DeepLenseError, match=why):
            read_image(tmp_path / name)
    good = (tmp_path / "chw.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(good[: len(good) - 7])
    with pytest.raises(DeepLenseError, match="truncated"):
        read_image(tmp_path / "trunc.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DeepLenseError, match=r"junk\.npy"):
        read_image(tmp_path / "junk.npy")


def test_npz_rule(tmp_path: Path) -> None:
    a, b = np.ones((4, 4)), np.zeros((4, 4))
    np.savez(tmp_path / "single.npz", a)
    np.savez(tmp_path / "image.npz", other=b, image=a, axion_mass=np.array(1e-23))
    np.savez_compressed(tmp_path / "x.npz", x=a, y=b)
    np.savez(tmp_path / "two.npz", p=a, q=b)
    assert read_image(tmp_path / "single.npz")[0].sum() == 16
    img, mass = read_image(tmp_path / "image.npz")
    assert img.sum() == 16 and mass == pytest.approx(1e-23)
    assert read_image(tmp_path / "x.npz")[0].sum() == 16
    with pytest.raises(DeepLenseError, match="name the image 'image' or 'x'"):
        read_image(tmp_path / "two.npz")


def test_fits_png_jpeg(tmp_path: Path) -> None:
    from astropy.io import fits
    from PIL import Image

    img = np.random.default_rng(3).random((20, 24)).astype(np.float32)
    fits.PrimaryHDU(img).writeto(tmp_path / "p.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(img * 2)]).writeto(tmp_path / "ext.fits")
    np.testing.assert_array_equal(read_image(tmp_path / "p.fits")[0], img)
    np.testing.assert_array_equal(read_image(tmp_path / "ext.fits")[0], img * 2)
    gray = (img * 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(gray).save(tmp_path / "g.jpg")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png")[0], gray.astype(np.float32))
    rgb, _ = read_image(tmp_path / "rgb.png")
    assert rgb.shape == (20, 24)
    np.testing.assert_allclose(rgb, gray, atol=1)
    assert read_image(tmp_path / "g.jpg")[0].shape == (20, 24)


def test_find_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("a/1.npy", "a/b/2.FITS", "a/readme.txt", ".hidden/3.npy", "a/4.png"):
        (tmp_path / rel).write_bytes(b"x")
    found = find_images([tmp_path / "a", tmp_path / "a" / "4.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/1.npy",
        "a/4.png",
        "a/b/2.FITS",
    ]
    with pytest.raises(DeepLenseError, match="unsupported"):
        find_images([tmp_path / "a" / "readme.txt"])
    with pytest.raises(DeepLenseError, match="no such file"):
        find_images([tmp_path / "missing"])
    assert ".npy" in SUPPORTED_EXTENSIONS and ".fits" in SUPPORTED_EXTENSIONS


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
EXTS = [".npy", ".npz", ".fits", ".png", ".jpg"]


def _read_or_deeplense_error(path: Path) -> None:
    try:
        img, mass = read_image(path)
    except DeepLenseError:
        return
    assert img.ndim == 2 and img.dtype == np.float32 and np.isfinite(img).all()
    assert mass is None or np.isfinite(mass)


@FUZZ
@given(data=st.binary(max_size=600), ext=st.sampled_from(EXTS))
def test_fuzz_random_bytes(tmp_path: Path, data: bytes, ext: str) -> None:
    path = tmp_path / f"f{ext}"
    path.write_bytes(data)
    _read_or_deeplense_error(path)


def _valid_file_bytes(ext: str, tmp: Path) -> bytes:
    from astropy.io import fits
    from PIL import Image

    img = np.linspace(0, 1, 64).reshape(8, 8)
    path = tmp / f"valid{ext}"
    if ext == ".npy":
        save_axion(path, img, 1e-23)
    elif ext == ".npz":
        np.savez_compressed(path, image=img)
    elif ext == ".fits":
        fits.PrimaryHDU(img).writeto(path, overwrite=True)
    else:
        Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path.read_bytes()


@FUZZ
@given(ext=st.sampled_from(EXTS), cut=st.floats(0, 1), flip=st.integers(0, 10**6))
def test_fuzz_truncated_and_mutated_valid_files(
    tmp_path: Path, ext: str, cut: float, flip: int
) -> None:
    good = _valid_file_bytes(ext, tmp_path)
    path = tmp_path / f"t{ext}"
    path.write_bytes(good[: int(len(good) * cut)])
    _read_or_deeplense_error(path)
    mutated = bytearray(good)
    mutated[flip % len(good)] ^= 0xFF
    path.write_bytes(bytes(mutated))
    _read_or_deeplense_error(path)


_AXION_PAYLOADS = [
    pickle.dumps(np.array([np.eye(3), np.float64(1e-23)], dtype=object), protocol=proto)
    for proto in (2, 3, 4, 5)
]


@FUZZ
@given(
    which=st.integers(0, 3),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_fuzz_safe_loads_mutated_payloads(which: int, edits: list[tuple[int, int]]) -> None:
    payload = bytearray(_AXION_PAYLOADS[which])
    for pos, value in edits:
        payload[pos % len(payload)] = value
    try:
        out = safe_loads(bytes(payload))
    except DeepLenseError:
        return
    # whatever survives is inert data: arrays, numpy scalars or plain values
    allowed = (np.ndarray, np.generic, bool, int, float, str, list, tuple, type(None))
    assert isinstance(out, allowed)
    if isinstance(out, np.ndarray) and out.dtype == object:
        assert all(isinstance(x, allowed) for x in out.ravel())


_DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "int64", "float16", "float32",
           "float64", ">f8", "complex64", "U3"]  # fmt: skip


@FUZZ
@given(
    dtype=st.sampled_from(_DTYPES),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    ext=st.sampled_from([*EXTS, "axion"]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_random_arrays_in_every_format(
    tmp_path: Path, dtype: str, shape: list[int], ext: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    arr = (rng.standard_normal(shape) * 1000).astype(dtype)
    if dtype.startswith("float") and arr.size:
        arr.flat[0] = rng.choice([np.nan, np.inf, 0.0])
    path = tmp_path / f"a{'.npy' if ext == 'axion' else ext}"
    try:
        if ext == "axion":
            save_axion(path, arr, float(rng.standard_normal()))
        elif ext == ".npy":
            np.save(path, arr)
        elif ext == ".npz":
            np.savez(path, arr)
        elif ext == ".fits":
            from astropy.io import fits

            fits.PrimaryHDU(arr).writeto(path, overwrite=True)
        else:
            from PIL import Image

            Image.fromarray(arr).save(path)
    except Exception:
        return  # the writer refused this array; nothing to read
    _read_or_deeplense_error(path)


# --------------------------------------------------------------------------- cache


def test_load_builds_memmap_cache_and_reuses_it(tmp_path: Path, _home: Path) -> None:
    root = tmp_path / "ds"
    written = write_tree(root, n=5)
    calls: list[tuple[int, int]] = []
    s = load_image_set(root, progress=lambda d, t: calls.append((d, t)))
    assert isinstance(s, ImageSet) and isinstance(s.images, np.memmap)
    assert s.images.shape == (15, 1, 16, 16) and s.images.dtype == np.float32
    assert not s.images.flags.writeable
    assert s.classes == CLASSES and s.labels.dtype == np.int64
    assert calls[-1] == (15, 15)
    assert s.cache_dir is not None and _home / "cache" in s.cache_dir.parents
    for i, rel in enumerate(s.files):
        img, mass = written[rel]
        np.testing.assert_array_equal(s.images[i, 0], img.astype(np.float32))
        assert s.classes[s.labels[i]] == rel.split("/")[0]
        assert (np.isnan(s.axion_mass[i]) and mass is None) or s.axion_mass[i] == mass
    calls.clear()
    again = load_image_set(root, progress=lambda d, t: calls.append((d, t)))
    assert calls == [] and again.cache_dir == s.cache_dir
    # no temporary folders left behind
    assert not [p for p in s.cache_dir.parent.iterdir() if p.name.startswith(".tmp")]


def test_cache_invalidated_when_files_change(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tree(root, n=4)
    first = load_image_set(root)
    rel = first.files[4]
    np.save(root / rel, np.full((16, 16), 7.0))
    changed = load_image_set(root)
    assert changed.cache_dir != first.cache_dir
    assert first.cache_dir is not None and not first.cache_dir.exists()  # old cache pruned
    assert float(changed.images[changed.files.index(rel), 0, 0, 0]) == 7.0
    np.save(root / "cdm" / "new.npy", np.ones((16, 16)))
    assert len(load_image_set(root)) == 13
    (root / "cdm" / "new.npy").unlink()
    (root / rel).unlink()
    assert len(load_image_set(root)) == 11


def test_interrupted_cache_build_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tree(root, n=4)

    def interrupt(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_image_set(root, cache_dir=tmp_path / "c", progress=interrupt)
    leftovers = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert leftovers == []
    assert len(load_image_set(root, cache_dir=tmp_path / "c")) == 12


def test_serial_and_threaded_builds_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ds"
    write_tree(root, n=7)
    np.save(root / "cdm" / "odd.npy", np.zeros((4, 4)))
    monkeypatch.setenv("DEEPLENSE_READ_WORKERS", "1")
    serial = load_image_set(root, skip_bad=True, cache_dir=tmp_path / "c1")
    monkeypatch.setenv("DEEPLENSE_READ_WORKERS", "4")
    threaded = load_image_set(root, skip_bad=True, cache_dir=tmp_path / "c2")
    assert serial.files == threaded.files and serial.skipped == threaded.skipped
    np.testing.assert_array_equal(serial.images, threaded.images)
    np.testing.assert_array_equal(serial.axion_mass, threaded.axion_mass)


def test_cache_dir_override(tmp_path: Path, _home: Path) -> None:
    root = tmp_path / "ds"
    write_tree(root, n=2)
    s = load_image_set(root, cache_dir=tmp_path / "elsewhere")
    assert s.cache_dir is not None and (tmp_path / "elsewhere") in s.cache_dir.parents
    assert not (_home / "cache").exists()


def test_any_classes_and_mixed_formats(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "four"
    rng = np.random.default_rng(4)
    for c in ["a", "b", "c", "d"]:
        (root / c / "sub").mkdir(parents=True)
        np.save(root / c / "x.npy", rng.random((12, 12)))
        np.savez(root / c / "sub" / "y.npz", image=rng.random((1, 12, 12)))
        Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8)).save(root / c / "z.png")
    (root / "a" / "notes.txt").write_text("ignored")
    s = load_image_set(root)
    assert s.classes == ["a", "b", "c", "d"] and s.counts() == dict.fromkeys("abcd", 3)
    assert "a/sub/y.npz" in s.files


def test_bad_files_reported_then_skipped(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tree(root, n=4)
    np.save(root / "cdm" / "small.npy", np.zeros((8, 8)))
    np.save(root / "cdm" / "nan.npy", np.full((16, 16), np.nan))
    np.save(root / "no_sub" / "rgb.npy", np.zeros((16, 16, 3)))
    (root / "no_sub" / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DeepLenseError) as err:
        load_image_set(root)
    msg = str(err.value)
    assert msg.startswith("4 bad file(s)") and "--skip-bad" in msg
    for name in ("small.npy: size 8x8 differs", "nan.npy: ", "rgb.npy: ", "corrupt.npy: "):
        assert name in msg
    s = load_image_set(root, skip_bad=True)
    assert len(s) == 12 and len(s.skipped) == 4 and "skipped 4 bad file(s)" in s.warnings[0]


def test_dangling_link_and_unwritable_cache(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tree(root, n=2)
    (root / "cdm" / "gone.npy").symlink_to(tmp_path / "missing.npy")
    with pytest.raises(DeepLenseError, match=r"1 bad file.*cdm/gone\.npy"):
        load_image_set(root)
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    with pytest.raises(DeepLenseError, match="cannot write the image cache"):
        load_image_set(root, skip_bad=True, cache_dir=blocker)


def test_empty_single_and_mismatched_classes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tree(root, n=3)
    (root / "empty").mkdir()
    with pytest.raises(DeepLenseError, match=r"without image files: empty.*--skip-bad"):
        load_image_set(root)
    s = load_image_set(root, skip_bad=True)
    assert s.classes == CLASSES and any("empty" in w for w in s.warnings)

    one = tmp_path / "one"
    write_tree(one, classes=["cdm"], n=3)
    # one class folder loads (an axion folder alone trains a mass regressor); training a
    # classifier on it is refused by the task (tests/test_regression.py)
    assert load_image_set(one).classes == ["cdm"]
    (tmp_path / "none").mkdir()
    with pytest.raises(DeepLenseError, match="no class folders"):
        load_image_set(tmp_path / "none")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(DeepLenseError, match="no usable images"):
        load_image_set(tmp_path / "hollow", skip_bad=True)
    with pytest.raises(
        DeepLenseError, match=r"has classes \['axion', 'cdm', 'no_sub'\].*\['a', 'b'\]"
    ):
        load_image_set(root, classes=["a", "b"], skip_bad=True)
    reordered = load_image_set(root, classes=["no_sub", "axion", "cdm"], skip_bad=True)
    assert reordered.classes == ["no_sub", "axion", "cdm"]
    assert all(
        f.startswith(reordered.classes[lab])
        for f, lab in zip(reordered.files, reordered.labels, strict=True)
    )


# --------------------------------------------------------------------------- sources, splits


def test_resolve_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    write_tree(root / "Model_III", n=1)
    write_tree(root / "Model_III_test", n=1)
    monkeypatch.setenv("DEEPLENSE_DATA_ROOT", str(root))
    src = resolve_source(dataset="model_iii")
    assert src == DataSource("Model_III", root / "Model_III", root / "Model_III_test")
    with pytest.raises(
        DeepLenseError, match=r"deeplense data simulate Model_II.*download Model_II"
    ):
        resolve_source(dataset="Model_II")
    with pytest.raises(DeepLenseError, match="unknown dataset"):
        resolve_source(dataset="Model_IX")
    other = tmp_path / "other"
    with pytest.raises(DeepLenseError, match="not a folder"):
        resolve_source(data=other)
    write_tree(other, n=1)
    assert resolve_source(data=other).test_dir is None
    assert resolve_source(data=root / "Model_III").test_dir == (root / "Model_III_test").resolve()
    with pytest.raises(DeepLenseError, match="not in"):
        resolve_source(dataset="Model_I", data_root=tmp_path / "nothing")


def test_held_out_splits_are_stratified_disjoint_and_seeded(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_tree(root, n=20)
    src = resolve_source(data=root)
    sp = make_splits(src, val_fraction=0.2, test_fraction=0.25, seed=3)
    assert sp.test is sp.train and sp.classes == CLASSES
    parts = [set(sp.train_idx), set(sp.val_idx), set(sp.test_idx)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(range(60))
    rec = sp.record()
    json.dumps(rec)
    assert rec["test_source"] == "held-out" and rec["seed"] == 3
    assert rec["counts"]["test"] == dict.fromkeys(CLASSES, 5)
    assert rec["counts"]["val"] == dict.fromkeys(CLASSES, 3)
    assert rec["counts"]["train"] == dict.fromkeys(CLASSES, 12)
    again = make_splits(src, val_fraction=0.2, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.val_idx, sp.val_idx)
    other_val = make_splits(src, val_fraction=0.1, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(other_val.test_idx, sp.test_idx)  # test never moves
    other_seed = make_splits(src, val_fraction=0.2, test_fraction=0.25, seed=4)
    assert not np.array_equal(other_seed.test_idx, sp.test_idx)
    small = make_splits(src, seed=3, max_train_per_class=5, max_test_per_class=2)
    assert small.record()["counts"]["test"] == dict.fromkeys(CLASSES, 2)
    assert len(small.train_idx) + len(small.val_idx) == 15
    with pytest.raises(DeepLenseError, match="below 1"):
        make_splits(src, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DeepLenseError, match="val_fraction"):
        make_splits(src, val_fraction=-0.1)


def test_splits_with_test_folder(tmp_path: Path) -> None:
    write_tree(tmp_path / "M", n=10)
    write_tree(tmp_path / "M_test", n=4, seed=9)
    src = resolve_source(data=tmp_path / "M")
    sp = make_splits(src, val_fraction=0.1, seed=0, max_test_per_class=3)
    assert sp.test is not sp.train and sp.test.root == (tmp_path / "M_test").resolve()
    rec = sp.record()
    assert rec["test_source"] == "test folder"
    assert rec["counts"]["test"] == dict.fromkeys(CLASSES, 3)
    assert rec["sizes"]["train"] + rec["sizes"]["val"] == 30 and rec["sizes"]["val"] == 3
    write_tree(tmp_path / "N", n=3)
    write_tree(tmp_path / "N_test", classes=["axion", "cdm"], n=3)
    with pytest.raises(DeepLenseError, match="were expected"):
        make_splits(resolve_source(data=tmp_path / "N"))


# --------------------------------------------------------------------------- CLI


def test_cli_info_json_and_table(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_tree(root / "Model_III", n=4)
    write_tree(root / "Model_III_test", n=2, seed=5)
    np.save(root / "Model_III" / "cdm" / "bad.npy", np.zeros((3, 5, 5)))
    runner = CliRunner()
    res = runner.invoke(cli, ["data", "info", "model_iii", "--data-root", str(root), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["name"] == "Model_III" and info["classes"] == CLASSES
    assert info["train"]["counts"] == dict.fromkeys(CLASSES, 4)
    assert info["test"]["counts"] == dict.fromkeys(CLASSES, 2)
    assert info["train"]["image_shape"] == [1, 16, 16]
    assert info["train"]["bad_files"] == 1 and info["test"]["bad_files"] == 0
    assert 0 <= info["train"]["values"]["min"] <= info["train"]["values"]["max"] <= 1
    assert (
        1e-24 <= info["train"]["axion_mass"]["min"] <= info["train"]["axion_mass"]["max"] <= 1e-22
    )
    assert info["train"]["source_dtypes"] == {"float64": 8, "object [image, axion_mass]": 4}
    res = runner.invoke(cli, ["data", "info", str(root / "Model_III")])
    assert res.exit_code == 0 and "no_sub" in res.output and "bad files: 1" in res.output
    res = runner.invoke(cli, ["data", "info", "Model_II", "--data-root", str(root)])
    assert res.exit_code == 1 and "deeplense data download Model_II" in res.output
    assert "Traceback" not in res.output


def test_cli_show_writes_png(tmp_path: Path) -> None:
    write_tree(tmp_path / "ds", n=3)
    out = tmp_path / "grid.png"
    res = CliRunner().invoke(
        cli, ["data", "show", str(tmp_path / "ds"), "-o", str(out), "--per-class", "2"]
    )
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "Wrote" in res.output
    from PIL import Image

    with Image.open(out) as im:
        assert im.width > 100 and im.height > 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".grid.png")]
    res = CliRunner().invoke(
        cli, ["data", "show", str(tmp_path / "ds"), "-o", str(tmp_path / "g.jpg")]
    )
    assert res.exit_code == 1 and "PNG" in res.output


def test_show_refuses_a_negative_seed_in_one_line(tmp_path: Path) -> None:
    from deeplense_cli import api

    write_tree(tmp_path / "ds", n=3)
    out = tmp_path / "g.png"
    res = CliRunner().invoke(
        cli, ["data", "show", str(tmp_path / "ds"), "-o", str(out), "--seed", "-1"]
    )
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "Error: --seed must be a whole number >= 0, got -1" in res.output
    with pytest.raises(DeepLenseError, match="--seed must be a whole number >= 0"):
        api.open_dataset(tmp_path / "ds").show(seed=-1)
    assert not out.exists()


def test_read_image_never_calls_allow_pickle(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """np.load is not used on input files (it could be asked to unpickle)."""

    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("np.load called on an input file")

    save_axion(tmp_path / "a.npy", np.ones((4, 4)), 1e-23)
    np.savez(tmp_path / "b.npz", image=np.ones((4, 4)))
    monkeypatch.setattr(np, "load", forbidden)
    assert read_image(tmp_path / "a.npy")[1] == pytest.approx(1e-23)
    assert read_image(tmp_path / "b.npz")[0].shape == (4, 4)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("image.npy", (tmp_path / "a.npy").read_bytes())
    (tmp_path / "c.npz").write_bytes(buf.getvalue())
    assert read_image(tmp_path / "c.npz")[1] == pytest.approx(1e-23)


def test_npy_headers_are_parsed_one_thread_at_a_time(tmp_path: Path) -> None:
    """numpy parses .npy headers with ast.literal_eval; on CPython 3.11.7 two threads doing
    that at once can fail ("AST constructor recursion depth mismatch", seen in a full test
    run while the cache build's reader threads ran), so every header parse takes one lock."""
    import threading

    from deeplense_cli.data import readers

    buf = io.BytesIO()
    np.save(buf, np.ones((8, 8), np.float32))
    done: list[object] = []
    with readers._NPY_HEADER_LOCK:
        thread = threading.Thread(
            target=lambda: done.append(readers.read_npy_header(io.BytesIO(buf.getvalue())))
        )
        thread.start()
        thread.join(0.3)
        assert thread.is_alive() and not done  # waits for the lock
    thread.join(5)
    assert done == [((8, 8), False, np.dtype("<f4"))]
    # both readers go through it: the image reader and the dtype summary
    path = tmp_path / "a.npy"
    np.save(path, np.ones((8, 8), np.float32))
    with readers._NPY_HEADER_LOCK:
        thread = threading.Thread(target=lambda: done.append(readers.read_image(path)))
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()
    thread.join(5)
    assert not thread.is_alive() and len(done) == 2


@pytest.mark.parametrize(
    "n, per_class, shown, why",
    [(5, 1000, 5, "the most any class has"), (40, 1000, 32, "the most a grid shows"),
     (5, 3, 3, None)],
)  # fmt: skip
def test_show_caps_per_class_at_what_exists_and_bounds_the_figure(
    n: int, per_class: int, shown: int, why: str | None, tmp_path: Path
) -> None:
    """--per-class 1000 on a few images per class drew 1000 columns of mostly empty panels
    (200,000 pixels wide) and said "x 1000 images"."""
    from PIL import Image

    write_tree(tmp_path / "ds", classes=["a", "b"], n=n, size=8)
    out = tmp_path / "grid.png"
    args = ["data", "show", str(tmp_path / "ds"), "-o", str(out), "--per-class", str(per_class)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert f"2 classes x {shown} images" in res.output
    if why:
        assert f"--per-class {per_class} capped at {shown}, {why}" in res.output
    else:
        assert "capped" not in res.output
    with Image.open(out) as im:
        assert im.width <= 200 * shown + 50 and im.height <= 2 * 220 + 50  # 100 dpi panels
