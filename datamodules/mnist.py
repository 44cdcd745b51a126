"""MNIST (LeCun, Cortes & Burges) as a LightningDataModule, from the IDX files or Kaggle's digit-recognizer CSV.

1 x 28 x 28 grey digits scaled to [0, 1] and normalised; a seeded, stratified train/validation split; the official
10,000-image test set for ``test``/``predict``. The IDX files are read by torchvision's reader.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from datamodules.image_cache import CachedImages, fingerprint
from datamodules.image_datamodule import Augment, ImageDataModule
from datamodules.splits import check_val_split, stratified_split

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SUPPORTED_SOURCES = ("idx", "csv")
SUPPORTED_TRAIN_FROM = ("train", "test")
SPLIT_VERSION = "train_test_split"  # in the splits' cache keys: which images are where depends on the method


def read_idx(path: str | Path, kind: Literal["images", "labels"] = "images") -> torch.Tensor:
    """An MNIST IDX file (``.gz`` or uncompressed) read by torchvision's reader: ``kind="images"`` gives uint8
    ``N x 28 x 28``, ``kind="labels"`` int64 ``N``.

    Raises:
        ValueError: not an IDX file of that kind, or truncated.
    """
    path, reader = Path(path), {"images": read_image_file, "labels": read_label_file}[kind]
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with gzip.open(path, "rb") as src, tempfile.NamedTemporaryFile(suffix=".idx") as plain:
            shutil.copyfileobj(src, plain)  # torchvision's reader takes the path of an uncompressed file
            plain.flush()
            return reader(plain.name)
    except (AssertionError, RuntimeError, TypeError, ValueError, KeyError, EOFError, gzip.BadGzipFile) as err:
        # torchvision's reader checks the header with `assert`; a wrong size fails its final `view`
        raise ValueError(
            f"{str(path)!r} is not a complete IDX file of MNIST {kind}: truncated, or not in the IDX format "
            f"({type(err).__name__}: {err})."
        ) from err


class MNISTDataModule(ImageDataModule):
    """MNIST digits 0-9.

    Args:
        data_dir: for ``source: idx``, torchvision's root (files in ``data_dir/MNIST/raw/``) or a folder that
            directly holds the raw IDX files (``.gz`` or not); for ``source: csv``, Kaggle's ``train.csv`` or the
            folder holding it.
        batch_size: samples per batch.
        num_workers: DataLoader workers (``None``: auto, 0 on CPU since the images are in-memory tensors).
        image_size: 28, or another side the digits are resized to (bilinear, antialiased).
        augment: small random affine (rotation, shift, scale) on the train split (``strong``: up to 20 degrees,
            15% shifts and zoom); no flips (digits are not mirror-symmetric) and no colour jitter.
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
        augment: bool | Augment = False,
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
        check_val_split(val_split)
        data_dir, cache_dir = str(data_dir), None if cache_dir is None else str(cache_dir)  # plain hparams
        super().__init__(
            data_dir, batch_size, num_workers, image_size, augment, normalize, cache_dir, download
        )
        self._ids: dict[str, list[str]] = {}  # per split: "<file>#<index in the file>" of every image

    def predict_ids(self) -> list[str]:
        """``<file>#<index>`` (e.g. ``t10k-images-idx3-ubyte.gz#17``, ``train.csv#3``: the 0-based image or data row
        in that file) of each sample that ``predict`` sees, in order."""
        self._prepare()
        return self._ids[self.TEST_SPLIT]

    def _augmentation(self) -> Any:
        if self.hparams.augment == "strong":  # 20 degrees, not 40: a 6 must not turn into a 9
            return v2.RandomAffine(degrees=20, translate=(0.15, 0.15), scale=(0.85, 1.15))
        return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))

    def _download(self) -> None:
        if self.hparams.source == "csv":
            raise RuntimeError(
                "The Kaggle digit-recognizer CSV needs a Kaggle login and cannot be downloaded here; "
                "use source='idx' (downloads the IDX files) or put train.csv into data_dir."
            )
        super()._download()

    def _data_present(self) -> bool:
        try:
            self._csv_file() if self.hparams.source == "csv" else self._idx_files()
        except FileNotFoundError:
            return False
        return True

    def _csv_file(self) -> Path:
        path = self.data_dir if self.data_dir.suffix == ".csv" else self.data_dir / "train.csv"
        if not path.is_file():
            raise self._missing(f"Kaggle digit-recognizer file {str(path)!r} does not exist")
        return path

    def _idx_files(self) -> dict[str, Path]:
        """The IDX files this configuration reads (``train_*`` only with ``train_from: train``)."""
        for raw in (self.data_dir / "MNIST" / "raw", self.data_dir / "raw", self.data_dir):
            if any((raw / (IDX_FILES["test_labels"] + ext)).is_file() for ext in ("", ".gz")):
                break
        else:
            raise self._missing(f"No MNIST IDX files found under {str(self.data_dir)!r}")
        wanted = ["test_images", "test_labels"]
        if self.hparams.train_from == "train":
            wanted += ["train_images", "train_labels"]
        return {what: self._idx_file(raw, what) for what in wanted}

    def _idx_file(self, raw: Path, what: str) -> Path:
        for ext in ("", ".gz"):
            if (raw / (IDX_FILES[what] + ext)).is_file():
                return raw / (IDX_FILES[what] + ext)
        hint = " (or set train_from='test' to train on a split of the 10,000 test images)"
        raise self._missing(
            f"{IDX_FILES[what]}[.gz] is missing in {str(raw)!r}{hint if what == 'train_images' else ''}"
        )

    def _read_csv(self) -> tuple[torch.Tensor, torch.Tensor, Any]:
        import pandas as pd

        path = self._csv_file()
        frame = pd.read_csv(path)
        if "label" not in frame.columns or frame.shape[1] != 785:
            raise ValueError(
                f"{str(path)!r} is not Kaggle's digit-recognizer train.csv (expected 785 columns "
                f"label,pixel0..pixel783; got {frame.shape[1]} columns starting {list(frame.columns[:3])})."
            )
        label_values, pixels = frame.pop("label").to_numpy(), frame.to_numpy(dtype=np.float64)
        for what, values, top in (("pixel", pixels, 255), ("label", label_values.astype(np.float64), 9)):
            bad = np.isnan(values) | (values < 0) | (values > top) | (values % 1 != 0)  # a uint8 cast would hide them
            if bad.any():
                row = int(np.flatnonzero(bad.any(axis=1) if values.ndim == 2 else bad)[0])
                raise ValueError(
                    f"{str(path)!r}, line {row + 2}: every {what} must be a whole number 0-{top} "
                    f"({int(bad.sum())} cell(s) are not: blank, fractional, e.g. pixels scaled to [0, 1], or out of "
                    f"range). Write the {what}s as Kaggle's train.csv has them."
                )
        labels = torch.tensor(label_values, dtype=torch.long)
        images = torch.tensor(pixels.astype(np.uint8).reshape(-1, 28, 28))
        return images, labels, (str(path), path.stat().st_size)

    def _read_idx_pair(self, files: dict[str, Path], prefix: str) -> tuple[torch.Tensor, torch.Tensor, Any]:
        images, labels = files[f"{prefix}_images"], files[f"{prefix}_labels"]
        key = [(f.name, f.stat().st_size) for f in (images, labels)]
        x, y = read_idx(images, "images"), read_idx(labels, "labels")
        if len(x) != len(y):
            raise ValueError(
                f"MNIST {images.name} ({len(x)} images) and {labels.name} ({len(y)} labels) differ."
            )
        return x, y, key

    def _cached(self, images: torch.Tensor, labels: torch.Tensor, key: Any) -> CachedImages:
        images = images.unsqueeze(1)
        if self.crop_size != images.shape[-1]:
            images = TF.resize(images, [self.crop_size, self.crop_size], antialias=True)
        return CachedImages(labels=labels, images=images.contiguous(), key=fingerprint(key))

    def _load_splits(self) -> dict[str, CachedImages]:
        """The train pool split into train/val (stratified, seeded); the official test set, or val without one."""
        hp = self.hparams
        test = None
        if hp.source == "csv":
            images, labels, key = self._read_csv()
            pool_file = self._csv_file().name
        else:
            files = self._idx_files()
            pool = "test" if hp.train_from == "test" else "train"
            images, labels, key = self._read_idx_pair(files, pool)
            pool_file = files[f"{pool}_images"].name
            if pool == "train":
                test = self._read_idx_pair(files, "test")
        train_idx, val_idx = (
            torch.from_numpy(i) for i in stratified_split(labels.numpy(), hp.val_split, hp.seed)
        )
        tag = (key, hp.val_split, hp.seed, SPLIT_VERSION)
        splits = {
            "train": self._cached(images[train_idx], labels[train_idx], (*tag, "train")),
            "val": self._cached(images[val_idx], labels[val_idx], (*tag, "val")),
        }
        self._ids = {
            "train": [f"{pool_file}#{i}" for i in train_idx.tolist()],
            "val": [f"{pool_file}#{i}" for i in val_idx.tolist()],
        }
        if test is None:
            splits["test"], self._ids["test"] = splits["val"], self._ids["val"]
        else:
            splits["test"] = self._cached(test[0], test[1], (test[2], "test"))
            test_file = self._idx_files()["test_images"].name
            self._ids["test"] = [f"{test_file}#{i}" for i in range(len(test[1]))]
        return splits
