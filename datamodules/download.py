"""Verified downloads and safe, atomic extraction of the datasets (``lit-cv download NAME --data-dir DIR``).

Every file is streamed to a hidden ``.<name>.<pid>.part``, verified and renamed into place only when its SHA-256 (or
the publisher's MD5) matches; on a mismatch the partial file is deleted. An existing file or folder is never deleted
or replaced before its replacement is downloaded and verified (``--force`` offline keeps what is there). Archives
are checked member by member before anything is written (absolute paths, ``..`` components and links are refused:
"zip-slip"), extracted into a hidden temporary folder beside the target and renamed into place, so a half-extracted
folder is never mistaken for a complete one; the temporary files and folders of a killed run (their process is gone)
are removed by the next run. Where no published checksum could be verified offline, the download is checked by
size/structure and the computed SHA-256 is printed (see the comments in :data:`DATASETS`).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.error import HTTPError, URLError

CHUNK = 1 << 20
DOWNLOADS = ".downloads"  # archives are kept here until extracted
EXTRACT_PREFIX = ".extract-"  # + "<pid>-<archive>-<random>": a temporary extraction folder
PART = ".part"  # ".<name>.<pid>.part": a file being downloaded or decompressed
LEFTOVER_FOLDERS = ("", DOWNLOADS, "MNIST/raw")  # where a killed run can leave them, relative to data_dir


class ChecksumError(ValueError):
    """A downloaded file does not have the expected checksum or size."""


class NoNetworkError(OSError):
    """Every mirror of a download failed before reaching a server (name resolution, refused or timed-out
    connections, unreachable network)."""


NO_NETWORK_HINT = (". No network reached: run this command where there is internet (e.g. a cluster's login node), "
                   "then copy {folder} here")


def reached_no_network(err: BaseException) -> bool:
    """Whether ``err`` (from ``urlopen`` or ``torch.hub``) means no server was reached, unlike an HTTP error."""
    reason = err.reason if isinstance(err, URLError) and not isinstance(err, HTTPError) else err
    return isinstance(reason, (socket.gaierror, ConnectionError, TimeoutError)) or getattr(reason, "errno", None) in (
        errno.ENETUNREACH, errno.EHOSTUNREACH)


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


@dataclass(frozen=True)
class Resource:
    """One file to fetch: mirrors tried in order, verified by ``sha256`` or ``md5`` (and ``size`` when known)."""

    urls: tuple[str, ...]
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(
    path: Path,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    name: str | None = None,
) -> None:
    """Raise :class:`ChecksumError` when ``path`` (called ``name`` in the message) does not match size/SHA-256/MD5."""
    name = name or path.name
    if size is not None and path.stat().st_size != size:
        raise ChecksumError(f"{name}: size {path.stat().st_size} bytes, expected {size}.")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                raise ChecksumError(f"{name}: {algorithm} {actual}, expected {expected}.")


def fetch(resource: Resource, folder: Path, opener: Callable[[str], object] | None = None) -> Path:
    """Download ``resource`` into ``folder`` (skipped when a verified copy is there) and return its path.

    The bytes go to ``.<filename>.<pid>.part``, which is removed if the download fails or the checksum does not
    match; an existing file that does not verify stays in place until a verified download replaces it (``os.replace``).
    ``opener`` (default ``urllib.request.urlopen``) is injectable for tests.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / resource.filename
    kept = ""
    if target.is_file():
        try:
            verify_file(target, resource.sha256, resource.md5, resource.size)
            return target
        except ChecksumError as err:
            kept = f"\nThe existing {target} was left as it is (it does not verify: {err})"
    opener = opener or (lambda url: urllib.request.urlopen(url, timeout=60))
    errors, offline = [], True
    for url in resource.urls:
        part = folder / f".{resource.filename}.{os.getpid()}{PART}"
        try:
            print(f"Downloading {url}")
            with opener(url) as response, open(part, "wb") as out:  # type: ignore[attr-defined]
                shutil.copyfileobj(response, out, CHUNK)
            verify_file(part, resource.sha256, resource.md5, resource.size, name=resource.filename)
        except ChecksumError as err:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"{err} Downloaded from {url}; the partial file was removed. Retry, or check that the file has not "
                f"changed upstream.{kept}"
            ) from None
        except OSError as err:  # network error: try the next mirror
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {err}")
            offline = offline and reached_no_network(err)
            continue
        if resource.sha256 is None and resource.md5 is None:
            print(f"{resource.filename}: no published checksum; computed sha256 {file_digest(part)}")
        os.replace(part, target)
        return target
    error = NoNetworkError if offline else OSError
    raise error(f"Could not download {resource.filename}:\n  " + "\n  ".join(errors) + kept)


def _check_member(name: str, archive: Path) -> None:
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.anchor or ".." in pure.parts:
            raise UnsafeArchiveError(
                f"Refusing to extract {archive.name}: member {name!r} would be written outside the target folder."
            )


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive into ``dest`` after checking every member (no absolute paths, ``..``, links)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member(name, archive)
            zf.extractall(dest)
        return
    if not tarfile.is_tarfile(archive):
        raise ChecksumError(
            f"{archive.name} is neither a zip nor a tar archive: a truncated or corrupt download. Delete {archive} "
            "and download it again."
        )
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _check_member(member.name, archive)
            if member.issym() or member.islnk() or member.isdev():
                raise UnsafeArchiveError(
                    f"Refusing to extract {archive.name}: link/device member {member.name!r}."
                )
        tf.extractall(dest, members=members)


def extract_atomic(archive: Path, dest: Path, force: bool = False) -> list[Path]:
    """Extract ``archive`` into a temporary folder inside ``dest``, then rename each top-level entry into ``dest``.

    Entries already present in ``dest`` are kept (they were renamed complete) unless ``force``. Returns the
    top-level paths in ``dest``. On any error the temporary folder is removed and ``dest`` is unchanged.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{EXTRACT_PREFIX}{os.getpid()}-{archive.name}-", dir=dest))
    try:
        safe_extract(archive, tmp)
        placed = []
        for entry in sorted(tmp.iterdir()):
            target = dest / entry.name
            if target.exists():
                if not force:
                    placed.append(target)
                    continue
                os.replace(target, tmp / f".old-{entry.name}")  # aside, inside tmp: removed below
            os.replace(entry, target)
            placed.append(target)
        return placed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gunzip_atomic(source: Path, target: Path) -> None:
    """Decompress ``source`` to ``target`` through a temporary file (torchvision's MNIST reads the raw files)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}{PART}")
    try:
        with gzip.open(source, "rb") as f_in, open(tmp, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out, CHUNK)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _owner_alive(name: str) -> bool:
    """Whether the process whose id is in a temporary name (``.extract-<pid>-...``, ``.<file>.<pid>.part``) runs."""
    digits = name[len(EXTRACT_PREFIX) :].split("-")[0] if name.startswith(EXTRACT_PREFIX) else name.split(".")[-2]
    if not digits.isdigit():
        return False  # an older lit-cv's name, without a process id
    try:
        os.kill(int(digits), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_leftovers(data_dir: Path) -> list[Path]:
    """Remove the temporary extraction folders and partial files that a killed download left in ``data_dir``
    (those of a download still running in another process are kept); returns what was removed."""
    removed = []
    for sub in LEFTOVER_FOLDERS:
        folder = data_dir / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            hidden = path.name.startswith(".") or sub == DOWNLOADS  # an older lit-cv wrote <name>.part there
            leftover = (path.name.startswith(EXTRACT_PREFIX) and path.is_dir()) or (
                hidden and path.name.endswith(PART) and path.is_file()
            )
            if leftover and not _owner_alive(path.name):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        print(f"Removed {len(removed)} leftover(s) of an interrupted download: {', '.join(p.name for p in removed)}")
    return removed


def _require(paths: list[Path], name: str) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ChecksumError(f"The {name} download does not have the expected structure; missing: {missing}.")


# ---- the datasets --------------------------------------------------------------------------------------------
# RPS: SHA-256 and sizes from TensorFlow Datasets' url_checksums/rock_paper_scissors.txt (verified there, not by
# downloading here).
RPS = (
    Resource(
        ("https://storage.googleapis.com/download.tensorflow.org/data/rps.zip",),
        "rps.zip",
        sha256="c2403444395842ad04c53612bad54b574443eae17a0723117a2ff87b9d72194f",
        size=200682221,
    ),
    Resource(
        ("https://storage.googleapis.com/download.tensorflow.org/data/rps-test-set.zip",),
        "rps-test-set.zip",
        sha256="c27ab9fa43ce40b2e453de711365b477f4424586edf0388116674fd320f07503",
        size=29516758,
    ),
)
# Cats vs. Dogs: Microsoft's PetImages zip. No published checksum of this (5340) version could be verified offline
# (TFDS lists only the older kagglecatsanddogs_3367a.zip), so the download is checked by structure
# (PetImages/Cat, PetImages/Dog) and its computed SHA-256 is printed.
CATS_DOGS = Resource(
    (
        (
            "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
            "kagglecatsanddogs_5340.zip"
        ),
    ),
    "kagglecatsanddogs_5340.zip",
)
# Bank: Kaggle's bank.csv pinned to a commit; SHA-256 matches ../shared/data/bank/bank.csv (its PROVENANCE.txt).
BANK_KAGGLE = Resource(
    (
        (
            "https://raw.githubusercontent.com/Lexie88rus/bank-marketing-analysis/"
            "7ad60d39249c902a9292e106a02f1b977725807e/bank.csv"
        ),
    ),
    "bank.csv",
    sha256="c25bf6ac8ef9e37119427fce9a32923baf57cb466ca27b34b2c930e88035d2fe",
)
# UCI's bank+marketing.zip (nested bank.zip / bank-additional.zip): no published checksum could be verified offline;
# checked by structure (bank-full.csv inside) and its computed SHA-256 is printed.
BANK_UCI = Resource(
    ("https://archive.ics.uci.edu/static/public/222/bank+marketing.zip",), "bank+marketing.zip"
)


def mnist_resources() -> list[Resource]:
    """torchvision's MNIST mirrors and the publisher's MD5s (``torchvision.datasets.MNIST``)."""
    from torchvision.datasets import MNIST

    return [Resource(tuple(m + name for m in MNIST.mirrors), name, md5=md5) for name, md5 in MNIST.resources]


def _download_rps(data_dir: Path, force: bool) -> None:
    for resource, folder in zip(RPS, ("rps", "rps-test-set")):
        if (data_dir / folder).is_dir() and not force:
            print(f"{data_dir / folder} exists; skipping (use --force to replace)")
            continue
        archive = fetch(resource, data_dir / DOWNLOADS)
        extract_atomic(archive, data_dir, force=force)
        archive.unlink()
    _require(
        [data_dir / f / c for f in ("rps", "rps-test-set") for c in ("paper", "rock", "scissors")], "rps"
    )


def _download_mnist(data_dir: Path, force: bool) -> None:
    raw = data_dir / "MNIST" / "raw"
    for resource in mnist_resources():
        plain = raw / resource.filename.removesuffix(".gz")
        if plain.is_file() and not force:
            continue
        gunzip_atomic(fetch(resource, raw), plain)


def _download_cats_dogs(data_dir: Path, force: bool) -> None:
    if (data_dir / "PetImages").is_dir() and not force:
        print(f"{data_dir / 'PetImages'} exists; skipping (use --force to replace)")
        return
    archive = fetch(CATS_DOGS, data_dir / DOWNLOADS)
    extract_atomic(archive, data_dir, force=force)
    _require([data_dir / "PetImages" / "Cat", data_dir / "PetImages" / "Dog"], "cats_dogs")
    archive.unlink()


def _download_bank(data_dir: Path, force: bool) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if force or not (data_dir / "bank.csv").is_file():
        fetch(BANK_KAGGLE, data_dir)
    wanted = {"bank-full.csv", "bank-names.txt", "bank-additional-full.csv"}
    if not force and all((data_dir / name).is_file() for name in wanted):
        return
    archive = fetch(BANK_UCI, data_dir / DOWNLOADS)
    with tempfile.TemporaryDirectory(prefix=f"{EXTRACT_PREFIX}{os.getpid()}-bank-", dir=data_dir) as tmp:
        outer = Path(tmp) / "outer"
        safe_extract(archive, outer)
        for inner in sorted(outer.rglob("*.zip")):
            safe_extract(inner, Path(tmp) / inner.stem)
        found = {p.name: p for p in Path(tmp).rglob("*") if p.name in wanted and p.is_file()}
        if "bank-full.csv" not in found:
            raise ChecksumError(
                f"{archive.name} does not contain bank-full.csv; is it the UCI bank marketing zip?"
            )
        for name, path in found.items():
            os.replace(path, data_dir / name)
    archive.unlink()


DATASETS: dict[str, Callable[[Path, bool], None]] = {
    "rps": _download_rps,
    "mnist": _download_mnist,
    "cats_dogs": _download_cats_dogs,
    "bank": _download_bank,
}


def download_dataset(name: str, data_dir: str | Path, force: bool = False) -> Path:
    """Fetch, verify and extract dataset ``name`` into ``data_dir``; returns ``data_dir`` for the datamodule."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    data_dir = Path(data_dir).expanduser()
    remove_leftovers(data_dir)
    try:
        DATASETS[name](data_dir, force)
    except NoNetworkError as err:
        raise NoNetworkError(f"{err}{NO_NETWORK_HINT.format(folder=data_dir)}") from None
    finally:
        downloads = data_dir / DOWNLOADS
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    return data_dir
