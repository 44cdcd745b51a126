"""MNIST (LeCun, Cortes & Burges) as a LightningDataModule, from the IDX files or Kaggle's digit-recognizer CSV.

1 x 28 x 28 grey digits scaled to [0, 1] and normalised; a seeded, stratified train/validation split; the official
10,000-image test set for ``test``/``predict``.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from datamodules.image_folder import ImageFolderDataModule, SplitData, stratified_split
from datamodules.normalization import fingerprint

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SUPPORTED_SOURCES = ("idx", "csv")
SUPPORTED_TRAIN_FROM = ("train", "test")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or uncompressed): magic ``0x0000 | dtype | ndim``, big-endian int32 dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file (bad magic number {data[:4].hex()}).")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    array = np.frombuffer(data, dtype=IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{str(path)!r} is truncated: header says {shape}, found {array.size} values.")
    return array.reshape(shape)


class MNISTDataModule(ImageFolderDataModule):
    """MNIST digits 0-9.

    Args:
        data_dir: for ``source: idx``, torchvision's root (files in ``data_dir/MNIST/raw/``) or a folder that
            directly holds the raw IDX files (``.gz`` or not); for ``source: csv``, Kaggle's ``train.csv`` or the
            folder holding it.
        batch_size: samples per batch.
        num_workers: DataLoader workers (``None``: auto, 0 on CPU since the images are in-memory tensors).
        image_size: 28, or another side the digits are resized to (bilinear, antialiased).
        augment: small random affine (rotation, shift, scale) on the train split; no flips (digits are not
            mirror-symmetric) and no colour jitter.
        normalize: ``train`` (course method, per-image statistics averaged over the train split) or ``none``.
        val_split: fraction of the training images held out for validation (stratified, seeded).
        seed: seed of the split.
        source: ``idx`` (torchvision's MNIST files) or ``csv`` (Kaggle digit-recognizer ``train.csv``:
            ``label,pixel0..pixel783``; Kaggle's ``test.csv`` has no labels, so the validation split also tests).
        train_from: ``train`` (the 60,000 training images; ``test`` uses the official 10,000) or ``test`` (split
            the 10,000 official test images into train/validation, e.g. 8,000/2,000 with ``val_split: 0.2``, and
            test on the validation part; for copies without ``train-images-idx3-ubyte``).
        download: fetch the IDX files (verified by torchvision's MD5s) in ``prepare_data`` if missing.

    Example::

        data:
          class_path: datamodules.MNISTDataModule
          init_args: {data_dir: data/mnist, batch_size: 64, val_split: 0.2}
    """

    CLASS_NAMES = tuple(str(i) for i in range(10))
    DOWNLOAD_NAME = "mnist"
    LAYOUT = (
        "  source=idx: DATA_DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]  (torchvision's root)\n"
        "              or DATA_DIR/{train,t10k}-...-ubyte[.gz] directly\n"
        "  source=csv: DATA_DIR/train.csv  (Kaggle digit-recognizer: label,pixel0..pixel783)"
    )

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 64,
        num_workers: int | None = None,
        image_size: int = 28,
        augment: bool = False,
        normalize: str = "train",
        val_split: float = 0.2,
        seed: int = 13,
        source: Literal["idx", "csv"] = "idx",
        train_from: Literal["train", "test"] = "train",
        cache_dir: str | Path | None = None,
        download: bool = False,
    ) -> None:
        if normalize not in ("train", "none"):
            raise ValueError(
                f"normalize={normalize!r} is not supported for grey MNIST; use 'train' or 'none'."
            )
        if source not in SUPPORTED_SOURCES:
            raise ValueError(
                f"source={source!r} is not supported; use one of {', '.join(SUPPORTED_SOURCES)}."
            )
        if train_from not in SUPPORTED_TRAIN_FROM:
            raise ValueError(f"train_from={train_from!r} is not supported; use 'train' or 'test'.")
        if not 0.0 < val_split < 1.0:
            raise ValueError(f"val_split must be in (0, 1), got {val_split}.")
        super().__init__(
            data_dir,
            batch_size,
            num_workers,
            image_size,
            augment,
            normalize,
            "memory",
            seed,
            cache_dir,
            download,
        )

    def _augmentation(self) -> Any:
        return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))

    def _download(self) -> None:
        if self.hparams.source == "csv":
            raise RuntimeError(
                "The Kaggle digit-recognizer CSV needs a Kaggle login and cannot be downloaded here; "
                "use source='idx' (downloads the IDX files) or put train.csv into data_dir."
            )
        super()._download()

    def _raw_dir(self) -> Path:
        for folder in (self.data_dir / "MNIST" / "raw", self.data_dir / "raw", self.data_dir):
            if any((folder / (IDX_FILES["test_labels"] + ext)).is_file() for ext in ("", ".gz")):
                return folder
        raise self._missing(f"No MNIST IDX files found under {str(self.data_dir)!r}")

    def _idx_file(self, raw: Path, what: str) -> Path:
        for ext in ("", ".gz"):
            if (raw / (IDX_FILES[what] + ext)).is_file():
                return raw / (IDX_FILES[what] + ext)
        hint = (
            " (or set train_from='test' to train on a split of the 10,000 test images)"
            if what == "train_images"
            else ""
        )
        raise self._missing(f"{IDX_FILES[what]}[.gz] is missing in {str(raw)!r}{hint}")

    def _to_split(self, images: np.ndarray, labels: np.ndarray, key: Any) -> SplitData:
        tensor = torch.from_numpy(np.array(images, dtype=np.uint8)).unsqueeze(1)  # a writable copy
        if self.crop_size != tensor.shape[-1]:
            tensor = TF.resize(tensor, [self.crop_size, self.crop_size], antialias=True)
        return SplitData(
            labels=torch.from_numpy(labels.astype(np.int64)), images=tensor, key=fingerprint(key)
        )

    def _load_arrays(
        self,
    ) -> tuple[tuple[np.ndarray, np.ndarray, Any], tuple[np.ndarray, np.ndarray, Any] | None]:
        """(train-pool images, labels, key), (test images, labels, key) or None when the test set is the pool."""
        if self.hparams.source == "csv":
            path = self.data_dir if self.data_dir.suffix == ".csv" else self.data_dir / "train.csv"
            if not path.is_file():
                raise self._missing(f"Kaggle digit-recognizer file {str(path)!r} does not exist")
            import pandas as pd

            frame = pd.read_csv(path)
            if "label" not in frame.columns or frame.shape[1] != 785:
                raise ValueError(
                    f"{str(path)!r} is not Kaggle's digit-recognizer train.csv (expected 785 columns "
                    f"label,pixel0..pixel783; got {frame.shape[1]} columns starting {list(frame.columns[:3])})."
                )
            labels = frame.pop("label").to_numpy()
            images = frame.to_numpy(dtype=np.uint8).reshape(-1, 28, 28)
            return (images, labels, (str(path), path.stat().st_size)), None
        raw = self._raw_dir()
        test_files = [self._idx_file(raw, "test_images"), self._idx_file(raw, "test_labels")]
        test = (
            read_idx(test_files[0]),
            read_idx(test_files[1]),
            [(f.name, f.stat().st_size) for f in test_files],
        )
        if self.hparams.train_from == "test":
            return test, None
        train_files = [self._idx_file(raw, "train_images"), self._idx_file(raw, "train_labels")]
        train = (
            read_idx(train_files[0]),
            read_idx(train_files[1]),
            [(f.name, f.stat().st_size) for f in train_files],
        )
        return train, test

    def _discover(self) -> dict[str, SplitData]:
        (images, labels, key), test = self._load_arrays()
        if len(images) != len(labels):
            raise ValueError(f"MNIST images ({len(images)}) and labels ({len(labels)}) differ in number.")
        hp = self.hparams
        train_idx, val_idx = stratified_split(labels.tolist(), hp.val_split, hp.seed)
        splits = {
            "train": self._to_split(
                images[train_idx], labels[train_idx], (key, "train", hp.val_split, hp.seed)
            ),
            "val": self._to_split(images[val_idx], labels[val_idx], (key, "val", hp.val_split, hp.seed)),
        }
        splits["test"] = (
            splits["val"] if test is None else self._to_split(test[0], test[1], (test[2], "test"))
        )
        return splits

    def _data_present(self) -> bool:
        try:
            self._load_arrays()
        except FileNotFoundError:
            return False
        return True
