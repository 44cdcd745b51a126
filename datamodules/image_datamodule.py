"""The shared base of the image datamodules: cached uint8 splits, train-only augmentation, normalisation, loaders.

A subclass says how to get its splits as :class:`~datamodules.image_cache.CachedImages` (``_load_splits``: files
in class folders, see :mod:`datamodules.image_folder`, or arrays, see :mod:`datamodules.mnist`); the base checks
them, resolves the normalisation (see :mod:`datamodules.normalization`) and serves normalised float batches.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset
from torchvision.transforms import v2

from datamodules.image_cache import CachedImages, resolve_cache_dir, train_statistics
from datamodules.loaders import DataLoadersMixin, check_loader_args
from datamodules.normalization import Normalization, fixed_normalization, timm_data_config, validate_normalize
from datamodules.transforms import BorderFillAffine

# In-memory splits up to this size (as float32) are normalised once, not per batch, and then served (and put on a
# CUDA device) as whole tensors: RPS, digits, MNIST (188 MB). Larger ones are normalised per image: the float copy of
# Cats-vs-Dogs at 224 px (1.2 GB) raised a fit's peak RSS from 2.7 to 3.9 GB for < 1 % of its step time.
NORMALIZED_CACHE_BYTES = 256 << 20
Augment = Literal["light", "strong"]
AUGMENT_LEVELS = ("light", "strong")


def random_affine(strong: bool) -> BorderFillAffine:
    """The geometric part of the train augmentation: rotation, shift and zoom, light or strong; the corners it
    uncovers take the image's border colour, not black."""
    if strong:
        return BorderFillAffine(degrees=40, translate=(0.2, 0.2), scale=(0.8, 1.2))
    return BorderFillAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))


class ImageSplitDataset(Dataset):
    """``(normalised float image, label)`` pairs from :class:`CachedImages`, with optional uint8 augmentation."""

    def __init__(self, data: CachedImages, normalization: Normalization, transform: Any = None) -> None:
        self.data = data
        self.normalization = normalization
        self.transform = transform
        self._normalized: tuple[Any, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.data)

    def _sample(self, img: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.transform is not None:
            img = self.transform(img)
        return self.normalization(img), self.data.labels[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sample(self.data.image(index), index)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch of samples (the DataLoader's fetcher calls this): one read of the memory map per batch.
        Normalisation stays per image on purpose (see docs/lightning-workarounds.md, "per-image normalisation")."""
        normalized = self._normalized_cache()
        if normalized is not None:  # no augmentation: the whole split was normalised once, samples are views
            return [(normalized[i], self.data.labels[i]) for i in indices]
        return [self._sample(img, i) for img, i in zip(self.data.batch(indices), indices)]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(normalised images, labels)`` of the whole split when samples are just their rows (in memory, no
        augmentation, normalised once): then :mod:`datamodules.loaders` slices batches from them; else None."""
        normalized = self._normalized_cache()
        return None if normalized is None else (normalized, self.data.labels)

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
        # each DataLoader worker rebuilds the normalised split rather than receiving a copy
        return {**self.__dict__, "_normalized": None}


class ImageDataModule(DataLoadersMixin, LightningDataModule):
    """Base of the image datamodules (see the module docstring); subclasses implement ``_load_splits`` and
    ``_data_present`` and set ``CLASS_NAMES``, ``DOWNLOAD_NAME`` and ``LAYOUT``. Every subclass takes these
    arguments itself: the base reads them from ``hparams``, which under LightningCLI hold the subclass's arguments only.

    Args:
        data_dir: dataset root (the layout is the subclass's ``LAYOUT``).
        batch_size: samples per batch (per device).
        num_workers: DataLoader workers; ``None`` = auto: 0 for in-memory images without CUDA (indexing a tensor is
            faster than inter-process transfer), else ``min(4, cpu_count)``.
        image_size: side of the square images fed to the net; ``None`` takes the input size of
            ``normalize: timm:<model>``.
        augment: random augmentation (``_augmentation``) on the train split: ``true`` / ``light`` (flips, rotation
            up to 10 degrees, 10% shifts and zoom, colour jitter) or ``strong`` (rotation up to 40 degrees, 20% shifts
            and zoom: for test images unlike the training ones, e.g. RPS's other hands); uncovered corners take
            the image's border colour.
        normalize: ``train`` (course method, train split only), ``imagenet``, ``none`` or ``timm:<model_name>``.
        cache_dir: where statistics and decoded tensors are cached; default ``<data_dir>/.lit-cv-cache``, or
            ``~/.cache/lit-cv/...`` when the data folder is read-only.
        download: download the data in ``prepare_data`` when it is missing (needs internet; on clusters run
            ``lit-cv download NAME --data-dir DIR`` on a login node instead).
    """

    CLASS_NAMES: tuple[str, ...] = ()
    DOWNLOAD_NAME = ""  # name for `lit-cv download NAME`
    LAYOUT = ""  # the expected data layout, for error messages

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int,
        num_workers: int | None,
        image_size: int | None,
        augment: bool | Augment,
        normalize: str,
        cache_dir: str | Path | None,
        download: bool,
    ) -> None:
        super().__init__()
        if augment not in (False, True, *AUGMENT_LEVELS):
            raise ValueError(f"augment must be true, false or one of {AUGMENT_LEVELS}, got {augment!r}.")
        validate_normalize(normalize)
        check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.num_classes = len(self.CLASS_NAMES)
        self.class_names = list(self.CLASS_NAMES)
        self.crop_size, self.resize_size = self._input_size(image_size, normalize)
        self.image_size = self.crop_size  # linked into the net by the CLI (like num_classes)
        self.normalization: Normalization | None = None
        self.splits: dict[str, CachedImages] = {}
        self.datasets: dict[str, ImageSplitDataset] = {}

    # ---- subclass hooks -------------------------------------------------------------------------------------------
    def _load_splits(self) -> dict[str, CachedImages]:
        """The ``train``, ``val`` and ``test`` splits (one object may serve twice); missing data raise ``_missing``."""
        raise NotImplementedError

    def _data_present(self) -> bool:
        """Whether the data are on disk (cheap: no decoding), for ``download: true``."""
        raise NotImplementedError

    def _in_memory(self) -> bool:
        """Whether the splits are in-memory tensors (then ``num_workers: null`` means 0 on CPU)."""
        return True

    def _resize_for(self, crop: int) -> int:
        """Shorter side the images are resized to before the centre crop (Cats vs. Dogs: larger)."""
        return crop

    def _augmentation(self) -> Any:
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                random_affine(self.hparams.augment == "strong"),
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
        train_tf = self._augmentation() if self.hparams.augment else None
        self.datasets = {
            name: ImageSplitDataset(data, norm, train_tf if name == "train" else None)
            for name, data in self.splits.items()
        }

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
        rank_zero_info(
            f"{type(self).__name__}: normalisation from the checkpoint: {self.normalization.describe()}"
        )

    # ---- internals ------------------------------------------------------------------------------------------------
    def _input_size(self, image_size: int | None, normalize: str) -> tuple[int, int]:
        """(crop, resize) sides."""
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

    def _missing(self, what: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"{what}. {type(self).__name__} expects data_dir={str(self.data_dir)!r} laid out as:\n{self.LAYOUT}\n"
            f"Get the data with `lit-cv download {self.DOWNLOAD_NAME} --data-dir {self.data_dir}` "
            "(or pass download=True), or point data_dir at an existing copy."
        )

    @cached_property
    def _cache_folder(self) -> Path | None:
        return resolve_cache_dir(self.data_dir, self.hparams.cache_dir)

    def _prepare(self) -> None:
        """Load the splits once and check that every class has images in every split."""
        if self.splits:
            return
        splits = self._load_splits()
        for name, data in splits.items():
            counts = torch.bincount(data.labels, minlength=self.num_classes)
            empty = [self.class_names[i] for i, c in enumerate(counts.tolist()) if c == 0]
            if empty:
                raise self._missing(f"The {name} split has no readable image of class(es) {empty}")
        self.splits = splits

    def _resolve_normalization(self) -> Normalization:
        if self.normalization is None:
            norm = fixed_normalization(self.hparams.normalize)
            if norm is None:
                info = {"image_size": self.crop_size, "resize": self.resize_size}
                norm = train_statistics(self.splits["train"], self._cache_folder, **info)
            self.normalization = norm
            rank_zero_info(f"{type(self).__name__}: normalisation {norm.describe()}")
        return self.normalization

    def _num_workers(self) -> int:
        if self.hparams.num_workers is not None:
            return self.hparams.num_workers
        if self._in_memory() and not torch.cuda.is_available():
            return 0
        return min(4, os.cpu_count() or 1)
