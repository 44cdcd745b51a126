"""Decode image files once and keep them: uint8 tensors in memory, an ``.npy`` memory map on disk, or not at all.

Also home of the cache folder (next to the data, or a user cache when the data folder is read-only), the cache keys
(file list + preprocessing) and the cached normalisation statistics, so every process and every later run reads the
same decoded pixels and the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF

from datamodules.normalization import Normalization, course_stats

CacheMode = Literal["memory", "disk", "none"]
SUPPORTED_CACHE = ("memory", "disk", "none")
CACHE_DIR_NAME = ".lit-cv-cache"  # created inside the data folder when it is writable
USER_CACHE = Path(os.environ.get("LIT_CV_CACHE", Path.home() / ".cache" / "lit-cv"))
DECODE_VERSION = 2  # bump when decode_image changes, to invalidate disk caches (2: real 16-bit values)
STATS_VERSION = "course-per-image-v1"  # part of the statistics' cache key
STATS_CHUNK = 512  # images read at a time when computing statistics


# ---- the cache folder ------------------------------------------------------------------------------------------
def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable ``parts`` (file lists, sizes, preprocessing settings)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:20]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def _data_dir_writable(data_dir: Path) -> bool:
    """Writable for us AND not marked read-only (``r-x``): root may write anywhere, but a shared read-only data
    folder must stay untouched."""
    try:
        mode = data_dir.stat().st_mode
    except OSError:
        return False
    return data_dir.is_dir() and os.access(data_dir, os.W_OK) and bool(stat.S_IMODE(mode) & 0o222)


def resolve_cache_dir(data_dir: str | Path, cache_dir: str | Path | None = None) -> Path | None:
    """The folder for cached statistics and decoded tensors; never raises.

    ``cache_dir`` if given and writable; else ``<data_dir>/.lit-cv-cache`` when the data folder is writable (and
    not marked read-only); else ``$LIT_CV_CACHE`` (default ``~/.cache/lit-cv``) / a hash of the data path; else the
    system temp folder. ``None`` only when nothing is writable (then nothing is cached).
    """
    data_dir = Path(data_dir).expanduser().resolve()
    candidates = []
    if cache_dir is not None:
        candidates.append(Path(cache_dir).expanduser())
    if _data_dir_writable(data_dir):
        candidates.append(data_dir / CACHE_DIR_NAME)
    tag = f"{data_dir.name}-{hashlib.sha1(str(data_dir).encode()).hexdigest()[:10]}"
    candidates += [USER_CACHE / tag, Path(tempfile.gettempdir()) / "lit-cv" / tag]
    return next((folder for folder in candidates if _writable(folder)), None)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (readers never see half a file)."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


# ---- decoding --------------------------------------------------------------------------------------------------
def decode_image(path: str | Path, resize: int | None, crop: int | None) -> torch.Tensor:
    """Decode one image file to a uint8 ``3 x crop x crop`` tensor, as ``ImageFolder`` + ``Resize`` would.

    RGBA, palette and grey images become RGB through PIL's ``convert("RGB")`` (``ImageFolder``'s loader); 16-bit
    and 32-bit integer grey images (PNG/TIFF ``I;16``, ``I``) are first scaled to 8 bits (:func:`to_8bit`), since PIL's
    conversion clips them to 255 (solid white). ``Resize(resize)`` (shorter side, bilinear with antialias, on the PIL
    image) then ``CenterCrop(crop)``.

    Raises:
        OSError: zero-byte, truncated or non-image file.
    """
    with Image.open(path) as img:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
        img = to_8bit(img).convert("RGB")  # workaround, see docs/lightning-workarounds.md (PIL 16-bit convert)
    if resize is not None:
        img = TF.resize(img, resize)
    if crop is not None:
        img = TF.center_crop(img, crop)
    return TF.pil_to_tensor(img)


def to_8bit(img: Image.Image) -> Image.Image:
    """A grey image with more than 8 bits per pixel as 8-bit ``L``: ``round(v * 255 / (2**bits - 1))`` with 16 bits
    for ``I;16*`` (and for ``I`` images whose values exceed 255, e.g. PNG 16-bit read by older PIL), ``I`` values up
    to 255 as they are; float ``F`` images in [0, 1] times 255, else clipped to [0, 255]. Other modes unchanged."""
    if not (img.mode.startswith("I") or img.mode == "F"):
        return img
    array = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        scale = 255.0 if array.size and array.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0 if img.mode.startswith("I;16") or (array.size and array.max() > 255) else 1.0
    return Image.fromarray(np.clip(np.round(array * scale), 0, 255).astype(np.uint8))  # uint8 2-D: mode L


def _try_decode(path: Path, resize: int | None, crop: int | None) -> torch.Tensor | None:
    if path.suffix.lower() not in IMG_EXTENSIONS:
        return None  # Thumbs.db, .DS_Store, notes.txt, ...
    try:
        return decode_image(path, resize, crop)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def decode_all(
    paths: Sequence[Path], resize: int | None, crop: int | None, keep: bool = True
) -> tuple[torch.Tensor | None, list[int]]:
    """Decode ``paths`` with a few threads; returns (stacked uint8 images of the good files or None, bad indices)."""
    workers = min(4, os.cpu_count() or 1)
    # silence PIL's "Corrupt EXIF data" chatter here, in the calling thread: catch_warnings is not thread-safe
    with warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool:
        warnings.simplefilter("ignore", UserWarning)
        decoded = list(pool.map(lambda p: _try_decode(p, resize, crop), paths, chunksize=32))
    bad = [i for i, img in enumerate(decoded) if img is None]
    good = [img for img in decoded if img is not None]
    if not keep or not good:
        return None, bad
    return torch.stack(good), bad


# ---- cached images ---------------------------------------------------------------------------------------------
@dataclass
class CachedImages:
    """The uint8 images of one split and their labels: a tensor, an ``.npy`` read by memory map, or (``images``
    None) the files, decoded on every read with ``resize``/``crop``. ``key`` identifies pixels and preprocessing."""

    labels: torch.Tensor
    images: torch.Tensor | Path | None = None
    paths: list[Path] | None = None
    key: str = ""
    resize: int | None = None
    crop: int | None = None
    _mmap: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def _array(self) -> np.ndarray:
        if self._mmap is None:  # opened lazily so DataLoader workers each map the file themselves
            self._mmap = np.load(self.images, mmap_mode="r", allow_pickle=False)
        return self._mmap

    def image(self, index: int) -> torch.Tensor:
        """One uint8 ``C x H x W`` image."""
        if isinstance(self.images, torch.Tensor):
            return self.images[index]
        if isinstance(self.images, Path):
            return torch.from_numpy(np.array(self._array()[index]))
        return decode_image(self.paths[index], self.resize, self.crop)  # type: ignore[index]

    def batch(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Several images; one read of the memory map for all of them."""
        if isinstance(self.images, Path):
            return list(torch.from_numpy(self._array()[np.asarray(indices)]).unbind(0))
        return [self.image(i) for i in indices]

    def chunks(self, size: int = STATS_CHUNK) -> Iterator[torch.Tensor]:
        """All images in order, as uint8 ``N x C x H x W`` tensors of up to ``size`` images."""
        if isinstance(self.images, torch.Tensor):
            yield from self.images.split(size)
            return
        for start in range(0, len(self), size):
            if isinstance(self.images, Path):
                yield torch.from_numpy(np.array(self._array()[start : start + size]))
            else:
                decoded, _ = decode_all(self.paths[start : start + size], self.resize, self.crop)  # type: ignore[index]
                if decoded is not None:
                    yield decoded

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mmap": None}  # DataLoader workers map the file themselves


class ImageCache:
    """Turns image files into :class:`CachedImages`, decoding each file list once per process (memoised) and, with
    ``mode="disk"``, once for all runs (``decoded-<key>.npy`` in ``folder``). Unreadable files are left out; their
    indices are cached beside (``files-<key>.json``) so a later run skips them without decoding.

    Args:
        root: data folder; cache keys hold paths relative to it, sizes and mtimes.
        folder: cache folder (see :func:`resolve_cache_dir`); ``None`` caches nothing on disk.
        mode: ``memory``, ``disk`` or ``none`` (decode on every read).
        resize: shorter side before the centre crop; ``crop``: side of the square images.
    """

    def __init__(
        self, root: Path, folder: Path | None, mode: CacheMode, resize: int | None, crop: int | None
    ) -> None:
        if mode not in SUPPORTED_CACHE:
            raise ValueError(f"cache={mode!r} is not supported; use one of {', '.join(SUPPORTED_CACHE)}.")
        self.root, self.folder, self.mode, self.resize, self.crop = root, folder, mode, resize, crop
        self._memo: dict[str, tuple[CachedImages, list[Path]]] = {}

    def load(self, paths: Sequence[Path], labels: Sequence[int]) -> tuple[CachedImages, list[Path]]:
        """The readable images of ``paths`` with their ``labels``, and the paths of the unreadable files."""
        key = fingerprint(self._file_ids(paths), self.resize, self.crop, DECODE_VERSION)
        if key not in self._memo:
            self._memo[key] = self._load(key, list(paths), list(labels))
        return self._memo[key]

    def _file_ids(self, paths: Sequence[Path]) -> list[tuple[str, int, int]]:
        """(path relative to root, size, mtime) per file."""
        root = self.root.resolve()
        ids = []
        for p in paths:
            rp, st = p.resolve(), p.stat()
            ids.append(
                (
                    str(rp.relative_to(root)) if rp.is_relative_to(root) else str(rp),
                    st.st_size,
                    st.st_mtime_ns,
                )
            )
        return ids

    def _load(self, key: str, paths: list[Path], labels: list[int]) -> tuple[CachedImages, list[Path]]:
        npy = self.folder / f"decoded-{key}.npy" if self.folder is not None and self.mode == "disk" else None
        meta = self.folder / f"files-{key}.json" if self.folder is not None else None
        bad: list[int] | None = None
        images: torch.Tensor | Path | None = None
        if meta is not None and meta.is_file():
            bad = _read_bad_indices(meta, len(paths))
            if bad is not None and npy is not None and _valid_npy(npy, len(paths) - len(bad), self.crop):
                images = npy
        if images is None and (self.mode != "none" or bad is None):
            decoded, bad = decode_all(paths, self.resize, self.crop, keep=self.mode != "none")
            images = self._save_npy(npy, decoded) if npy is not None and decoded is not None else decoded
            if meta is not None:
                try:
                    atomic_write_text(meta, json.dumps({"bad": bad}))
                except OSError:
                    pass
        bad_set = set(bad or [])
        keep = [i for i in range(len(paths)) if i not in bad_set]
        data = CachedImages(
            labels=torch.tensor([labels[i] for i in keep], dtype=torch.long),
            images=images,
            paths=[paths[i] for i in keep],
            key=key,
            resize=self.resize,
            crop=self.crop,
        )
        return data, [paths[i] for i in sorted(bad_set)]

    @staticmethod
    def _save_npy(path: Path, images: torch.Tensor) -> torch.Tensor | Path:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
        try:
            np.save(tmp, images.numpy())
            os.replace(tmp, path)
            return path
        except OSError:
            tmp.unlink(missing_ok=True)
            return images  # cache folder full or vanished: keep the tensors in memory


def _read_bad_indices(meta: Path, n_files: int) -> list[int] | None:
    """The unreadable-file indices of a ``files-<key>.json``, or None when the file is not what we wrote (then the
    files are decoded again and it is rewritten). Only JSON is read: a cache file never runs code."""
    try:
        bad = json.loads(meta.read_text())["bad"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = isinstance(bad, list) and all(type(i) is int and 0 <= i < n_files for i in bad)
    return sorted(set(bad)) if ok else None


def _valid_npy(path: Path, n_images: int, crop: int | None) -> bool:
    """Whether ``path`` is a decoded-images cache we wrote: a uint8 ``N x 3 x crop x crop`` array (read without
    pickle; an object array, a truncated or foreign file is not), else it is decoded again and overwritten."""
    if not path.is_file():
        return False
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    shape = (n_images, 3, crop, crop) if crop is not None else None
    return array.dtype == np.uint8 and array.ndim == 4 and (shape is None or array.shape == shape)


# ---- cached statistics -----------------------------------------------------------------------------------------
def train_statistics(train: CachedImages, folder: Path | None, **info: Any) -> Normalization:
    """The course's statistics of ``train`` (:func:`~datamodules.normalization.course_stats`), read from the cache
    folder when a run computed them before, else computed and written there (with ``info`` for the reader)."""
    path = (
        folder / f"stats-{fingerprint(train.key, len(train), STATS_VERSION)}.json"
        if folder is not None
        else None
    )
    if path is not None and path.is_file():
        try:
            state = json.loads(path.read_text())
            mean, std = (tuple(float(v) for v in state[k]) for k in ("mean", "std"))
            if len(mean) == len(std) and len(mean) in (1, 3) and all(map(math.isfinite, mean + std)):
                return Normalization("train", mean, std, extra=state)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or not ours (JSON only: never code): recompute and overwrite
    mean, std, n = course_stats(train.chunks())
    norm = Normalization("train", mean, std)
    if path is not None:
        try:
            atomic_write_text(path, json.dumps({"mean": mean, "std": std, "n_images": n, **info}, indent=1))
        except OSError:
            pass  # recomputed next time
    return norm
