"""The shared base of the image datamodules: find files, skip bad ones, decode once, normalise without leakage.

A subclass only says where the images of each split are (:meth:`ImageFolderDataModule._discover`); the base
decodes every image once into a uint8 ``N x 3 x S x S`` tensor (``cache: memory``), an ``.npy`` file read through
a memory map (``cache: disk``, keyed by the file list and the preprocessing) or not at all (``cache: none``, PNG/JPEG
decoded every epoch like torchvision's ``ImageFolder``). Augmentation (torchvision transforms v2) runs on the
cached uint8 tensors, train split only; normalisation runs last (see :mod:`datamodules.normalization`).
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from datamodules.normalization import (
    CACHE_DIR_NAME,
    Normalization,
    atomic_write_text,
    course_stats,
    fingerprint,
    fixed_normalization,
    read_stats,
    resolve_cache_dir,
    timm_data_config,
    validate_normalize,
    write_stats,
)

CacheMode = Literal["memory", "disk", "none"]
SUPPORTED_CACHE = ("memory", "disk", "none")
DECODE_VERSION = 1  # bump when decode_image changes, to invalidate disk caches
BAD_FILES_SHOWN = 5  # paths listed in the one "skipped files" warning
STATS_CHUNK = 512  # images decoded at a time when computing statistics without a cache
NORMALIZED_CACHE_BYTES = (
    1 << 30
)  # in-memory splits up to this size (as float32) are normalised once, not per batch


def decode_image(path: str | Path, resize: int | None, crop: int | None) -> torch.Tensor:
    """Decode one image file to a uint8 ``3 x crop x crop`` tensor, as ``ImageFolder`` + ``Resize`` would.

    RGBA, palette and grey images become RGB through PIL's ``convert("RGB")`` (``ImageFolder``'s loader);
    ``Resize(resize)`` (shorter side, bilinear with antialias, on the PIL image) then ``CenterCrop(crop)``.

    Raises:
        OSError: zero-byte, truncated or non-image file.
    """
    with Image.open(path) as img:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
        img = img.convert("RGB")
    if resize is not None:
        img = TF.resize(img, resize)
    if crop is not None:
        img = TF.center_crop(img, crop)
    return TF.pil_to_tensor(img)


def _try_decode(path: Path, resize: int | None, crop: int | None) -> torch.Tensor | None:
    if path.suffix.lower() not in IMG_EXTENSIONS:
        return None  # Thumbs.db, .DS_Store, notes.txt, ...
    try:
        return decode_image(path, resize, crop)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def decode_all(
    paths: list[Path], resize: int | None, crop: int | None, keep: bool = True
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


def list_files(folder: Path) -> list[Path]:
    """All regular files under ``folder`` (recursively), sorted; hidden files included so they get reported."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and CACHE_DIR_NAME not in p.parts)


def stratified_split(labels: list[int], val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): ``round(n_c * val_split)`` of every class to validation, by a seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for cls in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == cls]
        order = torch.randperm(len(idx), generator=generator).tolist()
        n_val = round(len(idx) * val_split)
        val += [idx[j] for j in order[:n_val]]
        train += [idx[j] for j in order[n_val:]]
    return sorted(train), sorted(val)


@dataclass
class FileSplit:
    """Image files of one split with their class indices (what a subclass's ``_discover`` returns)."""

    paths: list[Path]
    labels: list[int]


@dataclass
class SplitData:
    """One split ready for a Dataset: cached uint8 images (tensor, or an ``.npy`` path read by memory map) or files."""

    labels: torch.Tensor
    images: torch.Tensor | Path | None = None
    paths: list[Path] | None = None
    key: str = ""

    def __len__(self) -> int:
        return len(self.labels)


class ImageSplitDataset(Dataset):
    """``(normalised float image, label)`` pairs from a :class:`SplitData`, with optional uint8 augmentation."""

    def __init__(
        self,
        data: SplitData,
        normalization: Normalization,
        transform: Any = None,
        resize: int | None = None,
        crop: int | None = None,
    ) -> None:
        self.data = data
        self.normalization = normalization
        self.transform = transform
        self.resize, self.crop = resize, crop
        self._mmap: np.ndarray | None = None
        self._normalized: tuple[Any, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.data)

    def image(self, index: int) -> torch.Tensor:
        """The cached (or freshly decoded) uint8 image, before augmentation and normalisation."""
        images = self.data.images
        if isinstance(images, torch.Tensor):
            return images[index]
        if isinstance(images, Path):
            if self._mmap is None:  # opened lazily so DataLoader workers each map the file themselves
                self._mmap = np.load(images, mmap_mode="r")
            return torch.from_numpy(np.array(self._mmap[index]))
        return decode_image(self.data.paths[index], self.resize, self.crop)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.image(index)
        if self.transform is not None:
            img = self.transform(img)
        return self.normalization(img), self.data.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch of samples (the DataLoader's fetcher calls this): one read of the memory map per batch.

        Normalisation stays per image on purpose: one op over a whole small batch crosses torch's parallel grain
        size, and on a busy CPU the intra-op thread barrier made such batches up to 30x slower.
        """
        images = self.data.images
        if images is None:
            return [self[i] for i in indices]
        normalized = self._normalized_cache()
        if normalized is not None:  # no augmentation: the whole split was normalised once, samples are views
            return [(normalized[i], self.data.labels[i]) for i in indices]
        if isinstance(images, Path):
            if self._mmap is None:
                self._mmap = np.load(images, mmap_mode="r")
            batch = list(torch.from_numpy(self._mmap[np.asarray(indices)]).unbind(0))
        else:
            batch = [images[i] for i in indices]
        samples = []
        for img, index in zip(batch, indices):
            if self.transform is not None:
                img = self.transform(img)
            samples.append((self.normalization(img), self.data.labels[index]))
        return samples

    def _normalized_cache(self) -> torch.Tensor | None:
        """The in-memory split normalised as float32, when there is no augmentation and it is small (rebuilt
        when the normalisation changes, e.g. after ``load_state_dict``)."""
        images = self.data.images
        if self.transform is not None or not isinstance(images, torch.Tensor):
            return None
        if images.numel() * 4 > NORMALIZED_CACHE_BYTES:
            return None
        key = (self.normalization.mean, self.normalization.std)
        if self._normalized is None or self._normalized[0] != key:
            self._normalized = (key, self.normalization(images))
        return self._normalized[1]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mmap"] = None
        state["_normalized"] = None  # each DataLoader worker rebuilds it rather than receiving a copy
        return state


class ImageFolderDataModule(LightningDataModule):
    """Base of the image datamodules (see the module docstring); subclasses implement ``_discover``.

    Args:
        data_dir: dataset root (the layout is the subclass's ``LAYOUT``).
        batch_size: samples per batch (per device).
        num_workers: DataLoader workers; ``None`` = auto: 0 for a memory cache without CUDA (indexing a tensor is
            faster than inter-process transfer), else ``min(4, cpu_count)``.
        image_size: side of the square images fed to the net (``Resize`` + ``CenterCrop``); ``None`` takes the
            input size of ``normalize: timm:<model>``.
        augment: random flip / small affine / colour jitter on the train split.
        normalize: ``train`` (course method, train split only), ``imagenet``, ``none`` or ``timm:<model_name>``.
        cache: ``memory`` (decode once into RAM), ``disk`` (decode once into an ``.npy`` memory map in the cache
            folder, reused by later runs) or ``none`` (decode every epoch).
        seed: seed of the train/validation split.
        cache_dir: where statistics and decoded tensors are cached; default ``<data_dir>/.lit-cv-cache``, or
            ``~/.cache/lit-cv/...`` when the data folder is read-only.
        download: download the data in ``prepare_data`` when it is missing (needs internet; on clusters run
            ``lit-cv download NAME --data-dir DIR`` on a login node instead).
    """

    CLASS_NAMES: tuple[str, ...] = ()
    DOWNLOAD_NAME = ""  # name for `lit-cv download NAME`
    LAYOUT = ""  # the expected folder layout, for error messages

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 16,
        num_workers: int | None = None,
        image_size: int | None = 28,
        augment: bool = False,
        normalize: str = "train",
        cache: CacheMode = "memory",
        seed: int = 13,
        cache_dir: str | Path | None = None,
        download: bool = False,
    ) -> None:
        super().__init__()
        validate_normalize(normalize)
        if cache not in SUPPORTED_CACHE:
            raise ValueError(f"cache={cache!r} is not supported; use one of {', '.join(SUPPORTED_CACHE)}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 or None (auto), got {num_workers}.")
        base_args = {
            "data_dir": data_dir, "batch_size": batch_size, "num_workers": num_workers, "image_size": image_size,
            "augment": augment, "normalize": normalize, "cache": cache, "seed": seed, "cache_dir": cache_dir,
            "download": download,
        }
        self.save_hyperparameters()
        # Built by LightningCLI, the saved hparams are the subclass's parsed config, which omits base arguments a
        # subclass fixes (MNIST's cache); the base reads all of them from hparams.
        self.hparams.update({k: v for k, v in base_args.items() if k not in self.hparams})
        self.data_dir = Path(data_dir).expanduser()
        self.num_classes = len(self.CLASS_NAMES)
        self.class_names = list(self.CLASS_NAMES)
        self.crop_size, self.resize_size = self._input_size(image_size, normalize)
        self.normalization: Normalization | None = None
        self.splits: dict[str, SplitData] = {}
        self.datasets: dict[str, ImageSplitDataset] = {}
        self._memo: dict[str, SplitData] = {}
        self._cache_dir: Path | None | bool = False  # False = not resolved yet
        self._non_images: list[Path] = []  # filled by _class_tree, reported with the unreadable images

    # ---- subclass hooks -------------------------------------------------------------------------------------------
    def _discover(self) -> dict[str, FileSplit | SplitData]:
        """Files (or decoded tensors) of the ``train``, ``val`` and ``test`` splits; the same object may serve twice."""
        raise NotImplementedError

    def _resize_for(self, crop: int) -> int:
        """Shorter side the images are resized to before the centre crop (RPS: the crop size itself)."""
        return crop

    def _augmentation(self) -> Any:
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            ]
        )

    def _download(self) -> None:
        from datamodules.download import download_dataset

        download_dataset(self.DOWNLOAD_NAME, self.data_dir)

    # ---- Lightning hooks ------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download if asked and missing; compute and cache the normalisation statistics once (rank 0)."""
        if self.hparams.download and not self._data_present():
            self._download()
        if self.hparams.normalize == "train":
            self._prepare()
            self._resolve_normalization()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self._prepare()
        norm = self._resolve_normalization()
        resize, crop = self.resize_size, self.crop_size
        train_tf = self._augmentation() if self.hparams.augment else None
        self.datasets = {
            name: ImageSplitDataset(data, norm, train_tf if name == "train" else None, resize, crop)
            for name, data in self.splits.items()
        }

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """The normalisation numbers, so a reloaded checkpoint validates/tests/predicts with identical inputs."""
        state: dict[str, Any] = {"class_names": self.class_names}
        if self.normalization is not None:
            state["normalization"] = self.normalization.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("normalization")
        if saved is None:
            return
        if self.normalization is None:
            self.normalization = Normalization(saved.get("method", self.hparams.normalize))
        self.normalization.load_state_dict(saved)  # in place: datasets built by an earlier setup see it too
        rank_zero_info(f"{type(self).__name__}: normalisation from the checkpoint: {self._describe()}")

    # ---- internals ------------------------------------------------------------------------------------------------
    def _input_size(self, image_size: int | None, normalize: str) -> tuple[int, int]:
        if normalize.startswith("timm:"):
            timm_data_config(normalize[5:])  # fail now, not at setup, on an unknown model name
        if image_size is None:
            if not normalize.startswith("timm:"):
                raise ValueError(
                    "image_size=None takes the input size of a timm model and needs normalize='timm:<model_name>'; "
                    f"got normalize={normalize!r}. Set image_size (e.g. 224)."
                )
            config = timm_data_config(normalize[5:])
            crop = int(config["input_size"][-1])
            return crop, int(crop / config["crop_pct"])
        if image_size < 1:
            raise ValueError(f"image_size must be a positive int or None, got {image_size}.")
        return image_size, self._resize_for(image_size)

    def _data_present(self) -> bool:
        try:
            self._discover()
        except FileNotFoundError:
            return False
        return True

    def _missing(self, what: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"{what}. {type(self).__name__} expects data_dir={str(self.data_dir)!r} laid out as:\n{self.LAYOUT}\n"
            f"Get the data with `lit-cv download {self.DOWNLOAD_NAME} --data-dir {self.data_dir}` "
            "(or pass download=True), or point data_dir at an existing copy."
        )

    def _class_tree(self, root: Path, aliases: dict[str, tuple[str, ...]] | None = None) -> FileSplit:
        """Files of ``root/<class>/**`` for every class in ``CLASS_NAMES`` (folder names matched case-insensitively,
        also against ``aliases[class]``); a missing root or class folder raises the layout error."""
        if not root.is_dir():
            raise self._missing(f"Folder {str(root)!r} does not exist")
        folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
        paths: list[Path] = []
        labels: list[int] = []
        for index, name in enumerate(self.class_names):
            names = (name, *(aliases or {}).get(name, ()))
            folder = next((folders[n.lower()] for n in names if n.lower() in folders), None)
            if folder is None:
                raise self._missing(f"Class folder {name!r} is missing under {str(root)!r}")
            files = []
            for path in list_files(folder):  # non-images (Thumbs.db, .DS_Store) never enter a split
                (files if path.suffix.lower() in IMG_EXTENSIONS else self._non_images).append(path)
            paths += files
            labels += [index] * len(files)
        return FileSplit(paths, labels)

    def _cache_folder(self) -> Path | None:
        if self._cache_dir is False:
            self._cache_dir = resolve_cache_dir(self.data_dir, self.hparams.cache_dir)
        return self._cache_dir  # type: ignore[return-value]

    def _file_ids(self, paths: list[Path]) -> list[tuple[str, int, int]]:
        """(path relative to data_dir, size, mtime) per file: the cache key of decoded tensors and statistics."""
        root = self.data_dir.resolve()
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

    def _prepare(self) -> None:
        """Discover the splits and load/decode them once, skipping bad files with one warning."""
        if self.splits:
            return
        self._non_images = []
        found = self._discover()
        bad_paths: list[Path] = sorted(set(self._non_images))
        loaded: dict[int, SplitData] = {}
        for name, split in found.items():
            if id(split) not in loaded:
                data, bad = self._load(split) if isinstance(split, FileSplit) else (split, [])
                bad_paths += bad
                self._check_classes(name, data)
                loaded[id(split)] = data
            self.splits[name] = loaded[id(split)]
        if bad_paths:
            shown = "\n  ".join(str(p) for p in bad_paths[:BAD_FILES_SHOWN])
            more = (
                f"\n  ... and {len(bad_paths) - BAD_FILES_SHOWN} more"
                if len(bad_paths) > BAD_FILES_SHOWN
                else ""
            )
            rank_zero_warn(
                f"{type(self).__name__}: skipped {len(bad_paths)} unreadable file(s) (zero-byte, truncated or not "
                f"an image):\n  {shown}{more}"
            )

    def _check_classes(self, name: str, data: SplitData) -> None:
        counts = torch.bincount(data.labels, minlength=self.num_classes)
        empty = [self.class_names[i] for i, c in enumerate(counts.tolist()) if c == 0]
        if empty:
            raise self._missing(f"The {name} split has no readable image of class(es) {empty}")

    def _load(self, split: FileSplit) -> tuple[SplitData, list[Path]]:
        """Decode (or read from the cache) one split; returns the data without the bad files, and the bad paths."""
        key = fingerprint(self._file_ids(split.paths), self.resize_size, self.crop_size, DECODE_VERSION)
        if key in self._memo:
            data = self._memo[key]
            kept = set(data.paths or [])
            return data, [p for p in split.paths if p not in kept]
        mode, folder = self.hparams.cache, self._cache_folder()
        npy = folder / f"decoded-{key}.npy" if folder is not None and mode == "disk" else None
        meta_path = folder / f"files-{key}.json" if folder is not None else None
        bad: list[int] | None = None
        images: torch.Tensor | Path | None = None
        if meta_path is not None and meta_path.is_file():
            bad = json.loads(meta_path.read_text())["bad"]
            if npy is not None and npy.is_file():
                images = npy
        if images is None and (mode != "none" or bad is None):
            decoded, bad = decode_all(split.paths, self.resize_size, self.crop_size, keep=mode != "none")
            images = decoded
            if npy is not None and decoded is not None:
                images = self._save_npy(npy, decoded)
            if meta_path is not None:
                try:
                    atomic_write_text(meta_path, json.dumps({"bad": bad}))
                except OSError:
                    pass
        bad_set = set(bad or [])
        keep = [i for i in range(len(split.paths)) if i not in bad_set]
        data = SplitData(
            labels=torch.tensor([split.labels[i] for i in keep], dtype=torch.long),
            images=images,
            paths=[split.paths[i] for i in keep],
            key=key,
        )
        self._memo[key] = data
        return data, [split.paths[i] for i in sorted(bad_set)]

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

    def _train_batches(self):
        data = self.splits["train"]
        if isinstance(data.images, torch.Tensor):
            yield from data.images.split(STATS_CHUNK)
        elif isinstance(data.images, Path):
            array = np.load(data.images, mmap_mode="r")
            for start in range(0, len(array), STATS_CHUNK):
                yield torch.from_numpy(np.array(array[start : start + STATS_CHUNK]))
        else:
            paths = data.paths or []
            for start in range(0, len(paths), STATS_CHUNK):
                images, _ = decode_all(paths[start : start + STATS_CHUNK], self.resize_size, self.crop_size)
                if images is not None:
                    yield images

    def _resolve_normalization(self) -> Normalization:
        if self.normalization is not None:
            return self.normalization
        norm = fixed_normalization(self.hparams.normalize)
        if norm is None:
            train = self.splits["train"]
            folder = self._cache_folder()
            stats_key = fingerprint(train.key, len(train), "course-per-image-v1")
            path = folder / f"stats-{stats_key}.json" if folder is not None else None
            norm = read_stats(path)
            if norm is None:
                mean, std, n = course_stats(self._train_batches())
                norm = Normalization("train", mean, std)
                write_stats(path, norm, n_images=n, image_size=self.crop_size, resize=self.resize_size)
        self.normalization = norm
        rank_zero_info(f"{type(self).__name__}: normalisation {self._describe()}")
        return norm

    def _describe(self) -> str:
        norm = self.normalization
        if norm is None or norm.mean is None:
            return f"{getattr(norm, 'method', '?')} (scale to [0, 1] only)"
        fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"
        return f"{norm.method}: mean {fmt(norm.mean)}, std {fmt(norm.std)}"

    def _num_workers(self) -> int:
        if self.hparams.num_workers is not None:
            return self.hparams.num_workers
        if self.hparams.cache == "memory" and not torch.cuda.is_available():
            return 0
        return min(4, os.cpu_count() or 1)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader.")
        workers = self._num_workers()
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )
