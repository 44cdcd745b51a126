"""scikit-learn's bundled handwritten digits as a LightningDataModule: the offline quickstart dataset.

1,797 grey 8x8 images of the digits 0-9 (UCI "Optical Recognition of Handwritten Digits", shipped inside
scikit-learn, so no download is ever needed), upsampled to ``image_size`` so MNIST-sized nets run on them unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset, Subset, TensorDataset

from datamodules.loaders import DataLoadersMixin, check_loader_args
from datamodules.splits import check_val_split


class DigitsDataModule(DataLoadersMixin, LightningDataModule):
    """Digits 0-9 from ``sklearn.datasets.load_digits``, 1 x image_size x image_size, scaled to [0, 1].

    The train/validation split is a seeded random split; ``test`` and ``predict`` use the validation split
    (the dataset has no separate test set).

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 is fastest for these in-memory tensors).
        image_size: side the 8x8 images are bilinearly upsampled to.
        val_split: fraction of the 1,797 images held out for validation.
        seed: seed of the split.

    Example::

        data:
          class_path: datamodules.DigitsDataModule
          init_args: {batch_size: 32, image_size: 28}
    """

    TEST_SPLIT = "val"

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 28,
        val_split: float = 0.2,
        seed: int = 13,
    ) -> None:
        super().__init__()
        check_val_split(val_split)
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 (the digits are 8x8), got {image_size}.")
        check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        self.num_classes = 10
        self.image_size = image_size  # linked into the net by the CLI (like num_classes)
        self.class_names = [str(i) for i in range(10)]
        self.datasets: dict[str, Dataset] = {}

    @property
    def train_set(self) -> Dataset | None:
        return self.datasets.get("train")

    @property
    def val_set(self) -> Dataset | None:
        return self.datasets.get("val")

    def predict_ids(self) -> list[int]:
        """The index in ``sklearn.datasets.load_digits()`` of each sample that ``predict`` sees, in order."""
        self.setup()
        return list(self.datasets[self.TEST_SPLIT].indices)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if self.hparams.image_size != 8:
            images = F.interpolate(images, size=self.hparams.image_size, mode="bilinear", align_corners=False)
        dataset = TensorDataset(images.clamp_(0.0, 1.0), torch.tensor(digits.target, dtype=torch.long))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.hparams.seed))
        n_val = round(len(dataset) * self.hparams.val_split)
        self.datasets = {
            "train": Subset(dataset, order[n_val:].tolist()),
            "val": Subset(dataset, order[:n_val].tolist()),
        }
