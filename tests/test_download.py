"""`deeplense data download` against a real local HTTP server (Range requests, Drive page)."""

from __future__ import annotations

import io
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data import load_image_set
from deeplense_cli.data.download import download_dataset, fetch, unpack_archive

CLASSES = ["axion", "cdm", "no_sub"]


def make_tgz(top: str, n: int = 3, seed: int = 0) -> bytes:
    """A small archive in the released layout: top/{axion,cdm,no_sub}/*.npy."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for c in CLASSES:
            for i in range(n):
                img = rng.random((8, 8))
                arr = np.array([img, 1e-23], dtype=object) if c == "axion" else img
                data = io.BytesIO()
                np.save(data, arr, allow_pickle=True)
                info = tarfile.TarInfo(f"{top}/{c}/{c}_sim_{i}.npy")
                info.size = len(data.getvalue())
                tar.addfile(info, io.BytesIO(data.getvalue()))
    return buf.getvalue()


class Server:
    """Serves ``files`` by path; Range requests; optional one-time truncation per path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}  # path -> bytes to send before dropping the line
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                outer.requests.append((self.path, self.headers.get("Range")))
                query = dict(urllib.parse.parse_qsl(parsed.query))
                if parsed.path == "/uc":  # Google Drive's virus-scan warning page
                    page = (
                        '<html><form id="download-form" action="/download" method="get">'
                        f'<input type="hidden" name="id" value="{query["id"]}">'
                        '<input type="hidden" name="export" value="download">'
                        '<input type="hidden" name="confirm" value="t">'
                        '<input type="hidden" name="uuid" value="abc-123"></form></html>'
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                key = parsed.path
                if parsed.path == "/download":
                    if query.get("confirm") != "t" or query.get("uuid") != "abc-123":
                        self.send_error(403)
                        return
                    key = f"/drive/{query['id']}"
                data = outer.files.get(key)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and not outer.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = outer.cut_once.pop(key, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Server]:
    monkeypatch.setenv("DEEPLENSE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEEPLENSE_DOWNLOAD_URL", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = Server()
    yield srv
    srv.close()


def test_download_verify_unpack_via_cli(server: Server, tmp_path: Path) -> None:
    server.files["/mirror/Model_III.tgz"] = make_tgz("Model_III", n=3)
    server.files["/mirror/Model_III_test.tgz"] = make_tgz("Model_III_test", n=2, seed=1)
    root = tmp_path / "data"
    args = ["data", "download", "model_iii", "--data-root", str(root)]
    res = CliRunner().invoke(cli, [*args, "--url-base", f"{server.url}/mirror/"])
    assert res.exit_code == 0, res.output
    assert f"downloaded: {root / 'Model_III'}" in res.output
    train = load_image_set(root / "Model_III")
    assert train.counts() == dict.fromkeys(CLASSES, 3)
    assert load_image_set(root / "Model_III_test").counts() == dict.fromkeys(CLASSES, 2)
    assert sorted(p.name for p in root.iterdir()) == [".downloads", "Model_III", "Model_III_test"]
    assert list((root / ".downloads").iterdir()) == []  # archives removed after unpacking
    # a second run finds both folders and downloads nothing
    n = len(server.requests)
    res = CliRunner().invoke(cli, [*args, "--url-base", f"{server.url}/mirror"])
    assert res.exit_code == 0 and "already present" in res.output and len(server.requests) == n


def test_interrupted_download_resumes_with_range(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_tgz("Model_I", n=20)
    server.files["/m/Model_I.tgz"] = archive
    server.files["/m/Model_I_test.tgz"] = make_tgz("Model_I_test", n=1)
    server.cut_once["/m/Model_I.tgz"] = len(archive) // 3
    monkeypatch.setenv("DEEPLENSE_DOWNLOAD_URL", f"{server.url}/m")
    root = tmp_path / "data"
    with pytest.raises(DeepLenseError, match=r"interrupted after .* run the same command again"):
        download_dataset("Model_I", data_root=root)
    part = root / ".downloads" / "Model_I.tgz.part"
    assert part.stat().st_size == len(archive) // 3
    assert not (root / "Model_I").exists()
    seen: list[tuple[int, int | None]] = []
    results = download_dataset(
        "Model_I", data_root=root, progress=lambda name, d, t: seen.append((d, t))
    )
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    assert ("/m/Model_I.tgz", f"bytes={len(archive) // 3}-") in server.requests
    assert seen[-1][0] == seen[-1][1]
    assert load_image_set(root / "Model_I").counts() == dict.fromkeys(CLASSES, 20)


def test_server_ignoring_range_restarts_cleanly(server: Server, tmp_path: Path) -> None:
    data = b"0123456789" * 1000
    server.files["/f.bin"] = data
    server.ignore_range = True
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"XXXX")  # stale partial data
    fetch(f"{server.url}/f.bin", dest)
    assert dest.read_bytes() == data and not dest.with_name("f.bin.part").exists()


def test_size_mismatch_is_a_clear_error(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = b"a" * 5000
    dest = tmp_path / "f.bin"
    with pytest.raises(DeepLenseError, match=r"size mismatch.*5000 bytes but 4000 are expected"):
        fetch(f"{server.url}/f.bin", dest, expected_size=4000)
    assert not dest.exists()
    # an already complete .part whose size the server confirms (416) is accepted
    dest.with_name("f.bin.part").write_bytes(b"a" * 5000)
    assert fetch(f"{server.url}/f.bin", dest).read_bytes() == b"a" * 5000


def test_google_drive_confirm_page_is_followed(server: Server, tmp_path: Path) -> None:
    from deeplense_cli.data.download import DRIVE_IDS

    train_id, test_id = DRIVE_IDS["Model_II"]
    server.files[f"/drive/{train_id}"] = make_tgz("Model_II", n=1)
    server.files[f"/drive/{test_id}"] = make_tgz("Model_II_test", n=1)
    root = tmp_path / "data"
    download_dataset("Model_II", data_root=root, drive_base=server.url)
    assert (root / "Model_II" / "cdm" / "cdm_sim_0.npy").is_file()
    assert (root / "Model_II_test" / "axion" / "axion_sim_0.npy").is_file()
    assert any(p.startswith("/download?") for p, _ in server.requests)


def test_html_instead_of_archive_is_an_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DeepLenseError, match="web page instead of"):
        fetch(f"{server.url}/uc?id=x&export=download", tmp_path / "a.tgz")


def _evil_tgz(path: Path, kind: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("Model_III/cdm/a.npy")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        if kind == "dotdot":
            info = tarfile.TarInfo("Model_III/../../escaped.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        elif kind == "absolute":
            info = tarfile.TarInfo("/tmp/deeplense-absolute.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        elif kind == "symlink":
            info = tarfile.TarInfo("Model_III/cdm/link")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        elif kind == "two_tops":
            info = tarfile.TarInfo("Other/x.npy")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("dotdot", "leaves the folder"),
        ("absolute", "absolute path"),
        ("symlink", "link"),
        ("two_tops", "one top-level folder"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path: Path, kind: str, why: str) -> None:
    root = tmp_path / "root" / "data"
    root.mkdir(parents=True)
    archive = tmp_path / "evil.tgz"
    _evil_tgz(archive, kind)
    with pytest.raises(DeepLenseError, match=why):
        unpack_archive(archive, root, "Model_III")
    assert list(root.iterdir()) == []  # nothing unpacked, no temporary folder left
    assert (
        not (tmp_path / "escaped.txt").exists() and not (tmp_path / "root" / "escaped.txt").exists()
    )


def test_traversal_archive_refused_through_cli(server: Server, tmp_path: Path) -> None:
    evil = tmp_path / "evil.tgz"
    _evil_tgz(evil, "dotdot")
    server.files["/m/Model_III.tgz"] = evil.read_bytes()
    root = tmp_path / "data"
    res = CliRunner().invoke(
        cli,
        [
            "data",
            "download",
            "Model_III",
            "--data-root",
            str(root),
            "--url-base",
            f"{server.url}/m",
        ],
    )
    assert res.exit_code == 1 and "leaves the folder" in res.output
    assert not (root / "Model_III").exists() and not (tmp_path / "escaped.txt").exists()


def test_corrupt_archive_and_unknown_dataset(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"\x1f\x8b\x08 not really gzip")
    with pytest.raises(DeepLenseError, match=r"not a readable \.tgz"):
        unpack_archive(bad, tmp_path, "Model_I")
    with pytest.raises(DeepLenseError, match="unknown dataset"):
        download_dataset("Model_IV", data_root=tmp_path)
