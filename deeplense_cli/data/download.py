"""Download and unpack the released Model_I/II/III archives (urllib only).

Each dataset has two archives, ``<Name>.tgz`` (training set, unpacks to ``<Name>/``) and
``<Name>_test.tgz`` (``<Name>_test/``). By default they come from Google Drive (the published
file ids); ``url_base`` (``--url-base`` / ``DEEPLENSE_DOWNLOAD_URL``) points at a mirror that
serves ``<url_base>/<Name>.tgz`` and ``<url_base>/<Name>_test.tgz`` instead.

* Resume: bytes arrive in ``<root>/.downloads/<archive>.part``; a later run asks for the rest
  with an HTTP ``Range`` request (a server that ignores it makes the download start over).
* Verify: the file must have exactly the size the server announced (``Content-Length`` /
  ``Content-Range``) and, when one is known, the expected size.
* Unpack safely: absolute paths, ``..`` members, links and device files are refused; the
  archive is extracted into a temporary folder under the data root and its single top-level
  folder renamed into place, so ``<root>/<Name>`` appears complete or not at all.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

from deeplense_cli.core import atomic, paths
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.sources import KNOWN_DATASETS, canonical_name

DRIVE_BASE = "https://drive.google.com"
URL_ENV = "DEEPLENSE_DOWNLOAD_URL"
CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "deeplense-downloader/1 (urllib)"
DOWNLOAD_HINT = "choose another --data-root"

# Google Drive ids of the published archives; sizes are approximate (for messages only).
DRIVE_IDS: dict[str, tuple[str, str]] = {
    "Model_I": ("1QMVLpqag6S9JWqzmGM_pK4C0F1eBVIfV", "1rUAKLLS3p9jDaL9R9m84JVKvMcUuVsO1"),
    "Model_II": ("1HYPkdtVUj9xsoGzFDxT4rhl37KmqDCg4", "1PFdpqk7XOAKtg0Cnav4HTzyJiudx9dZv"),
    "Model_III": ("1ynKMJoEeKKJqLfuKRR1Y7rQjeBMM0w94", "18BuCv40t6qmiNnhjJF1y9rqSBhBOfDon"),
}
APPROX_TRAIN_GB = {"Model_I": 1.99, "Model_II": 2.84, "Model_III": 2.84}

ByteProgress = Callable[[str, int, "int | None"], None]  # (archive name, bytes so far, total)


@dataclass
class Archive:
    filename: str  # Model_III.tgz
    folder: str  # Model_III
    drive_id: str


def archives_for(dataset: str) -> list[Archive]:
    name = canonical_name(dataset)
    if name is None:
        raise DeepLenseError(
            f"unknown dataset {dataset!r}; downloadable: {', '.join(KNOWN_DATASETS)}"
        )
    train_id, test_id = DRIVE_IDS[name]
    return [
        Archive(f"{name}.tgz", name, train_id),
        Archive(f"{name}_test.tgz", f"{name}_test", test_id),
    ]


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )


class _FormParser(HTMLParser):
    """Collects forms (action + hidden inputs) from Drive's "download anyway" page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("action", ""), {}))
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1][1][a["name"]] = a.get("value", "")


def drive_confirm_url(page: str, url: str) -> str | None:
    """The real download URL behind Google Drive's virus-scan warning page, if any."""
    parser = _FormParser()
    parser.feed(page)
    for action, fields in parser.forms:
        if "id" in fields and ("confirm" in fields or "uuid" in fields):
            return urllib.parse.urljoin(url, action) + "?" + urllib.parse.urlencode(fields)
    match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if match:
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        query["confirm"] = match.group(1)
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    return None


def _range_total(content_range: str | None) -> tuple[int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 100); ``bytes */100`` -> (None, 100)."""
    m = re.match(r"bytes\s+(\d+|\*)(?:-\d+)?/(\d+|\*)", content_range or "")
    if not m:
        return None, None
    start = None if m.group(1) == "*" else int(m.group(1))
    total = None if m.group(2) == "*" else int(m.group(2))
    return start, total


def fetch(
    url: str,
    dest: Path,
    progress: ByteProgress | None = None,
    expected_size: int | None = None,
    drive: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming a partial file."""
    part = dest.with_name(dest.name + ".part")
    with atomic.writing(part, DOWNLOAD_HINT):
        dest.parent.mkdir(parents=True, exist_ok=True)
    opener = _opener()
    for _ in range(4):  # the Drive warning page and a stale .part each cost one round
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                _, total = _range_total(exc.headers.get("Content-Range"))
                if total == offset and expected_size in (None, offset):
                    os.replace(part, dest)  # the previous run had finished
                    return dest
                part.unlink()  # stale partial file: start over
                continue
            raise DeepLenseError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DeepLenseError(
                f"cannot reach {url} ({exc}); check the network, or download the archive "
                f"elsewhere and serve it with --url-base / {URL_ENV}"
            ) from None
        with resp:
            if "text/html" in resp.headers.get("Content-Type", ""):
                page = resp.read(2_000_000).decode("utf-8", "replace")
                confirm = drive_confirm_url(page, resp.geturl()) if drive else None
                if confirm is None:
                    raise DeepLenseError(
                        f"{url} returned a web page instead of {dest.name} (Google Drive quota "
                        "or a wrong URL?); download it in a browser and serve it with "
                        f"--url-base, or unpack it into {dest.parent.parent} yourself"
                    )
                url = confirm
                continue
            if resp.status == 206:
                start, total = _range_total(resp.headers.get("Content-Range"))
                if start != offset:
                    part.unlink()
                    continue
            else:
                offset = 0  # the server sent the whole file
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if expected_size is not None and total is not None and total != expected_size:
                raise DeepLenseError(
                    f"size mismatch for {dest.name}: the server offers {total} bytes but "
                    f"{expected_size} are expected; check the URL"
                )
            done = offset
            with atomic.writing(part, DOWNLOAD_HINT), open(part, "ab" if offset else "wb") as fh:
                try:
                    while chunk := resp.read(CHUNK):
                        fh.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(dest.name, done, total)
                except (OSError, urllib.error.URLError, EOFError) as exc:
                    # a full or read-only disk is not an interrupted download
                    failure = atomic.write_failure(exc, part, DOWNLOAD_HINT)
                    if failure is not None:
                        raise failure from None
                    raise DeepLenseError(
                        f"download of {dest.name} interrupted after {done} bytes ({exc}); "
                        "run the same command again to resume"
                    ) from None
        size = part.stat().st_size
        if total is not None and size < total:
            raise DeepLenseError(
                f"download of {dest.name} interrupted after {size} of {total} bytes; "
                "run the same command again to resume"
            )
        want = expected_size if expected_size is not None else total
        if want is not None and size != want:
            part.unlink()
            raise DeepLenseError(
                f"size mismatch for {dest.name}: received {size} bytes, expected {want}; "
                "the partial file was removed, run the command again"
            )
        os.replace(part, dest)
        return dest
    raise DeepLenseError(f"could not download {url} (too many redirects or restarts)")


def _check_members(archive: Path, members: list[tarfile.TarInfo]) -> str:
    tops: set[str] = set()
    for m in members:
        p = PurePosixPath(m.name)
        if m.name.startswith(("/", "\\")) or p.is_absolute() or re.match(r"^[A-Za-z]:", m.name):
            raise DeepLenseError(f"{archive.name}: refusing absolute path {m.name!r} in archive")
        if ".." in p.parts or "\\" in m.name:
            raise DeepLenseError(f"{archive.name}: refusing path {m.name!r} that leaves the folder")
        if m.issym() or m.islnk():
            raise DeepLenseError(f"{archive.name}: refusing link {m.name!r} in archive")
        if not (m.isfile() or m.isdir()):
            raise DeepLenseError(f"{archive.name}: refusing special file {m.name!r} in archive")
        parts = [x for x in p.parts if x not in (".", "")]
        if parts:
            tops.add(parts[0])
    if len(tops) != 1:
        raise DeepLenseError(
            f"{archive.name} should hold one top-level folder, found {sorted(tops)[:5]}"
        )
    return tops.pop()


def unpack_archive(archive: Path, root: Path, folder: str) -> Path:
    """Extract ``archive`` safely; its top-level folder becomes ``root/folder`` atomically."""
    dest = root / folder
    if dest.exists():
        raise DeepLenseError(f"{dest} already exists; remove it to unpack {archive.name} again")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            top = _check_members(archive, members)
            # unpacked beside the destination (one filesystem for the rename); a killed
            # unpack's folder is swept by the next download
            with atomic.temp_folder(dest, hint=DOWNLOAD_HINT) as tmp:
                tar.extractall(tmp, members=members, filter="data")
                src = tmp / top
                if not src.is_dir():
                    raise DeepLenseError(f"{archive.name}: top-level entry {top!r} is not a folder")
                os.rename(src, dest)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        failure = atomic.write_failure(exc, dest, DOWNLOAD_HINT)
        if failure is not None:
            raise failure from None
        raise DeepLenseError(
            f"{archive} is not a readable .tgz archive ({exc}); delete it and download again"
        ) from None
    return dest


@dataclass
class DownloadResult:
    folder: Path
    status: str  # "downloaded" or "already present"


def download_dataset(
    dataset: str,
    data_root: str | os.PathLike[str] | None = None,
    url_base: str | None = None,
    progress: ByteProgress | None = None,
    keep_archive: bool = False,
    drive_base: str = DRIVE_BASE,
) -> list[DownloadResult]:
    """Fetch, verify and unpack the train and test archives of ``dataset`` into the data root."""
    root = paths.data_root(data_root)
    with atomic.writing(root, DOWNLOAD_HINT):
        root.mkdir(parents=True, exist_ok=True)
    atomic.sweep(root)  # unpacked folders of a killed run
    base = url_base or os.environ.get(URL_ENV) or None
    results = []
    for arch in archives_for(dataset):
        dest = root / arch.folder
        if dest.exists():
            results.append(DownloadResult(dest, "already present"))
            continue
        if base:
            url = f"{base.rstrip('/')}/{arch.filename}"
        else:
            url = f"{drive_base}/uc?id={arch.drive_id}&export=download"
        tgz = root / ".downloads" / arch.filename
        if not tgz.exists():
            fetch(url, tgz, progress=progress, drive=not base)
        unpack_archive(tgz, root, arch.folder)
        if not keep_archive:
            tgz.unlink()
        results.append(DownloadResult(dest, "downloaded"))
    return results
