"""The four ``*_dataloader`` hooks, written once for every datamodule of the package."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def check_loader_args(batch_size: int, num_workers: int | None) -> None:
    """Raise a ``ValueError`` for ``batch_size < 1`` or ``num_workers < 0`` (``None`` is allowed: automatic)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 or None (auto), got {num_workers}.")


class DataLoadersMixin:
    """``train_dataloader`` (shuffled) and ``val``/``test``/``predict_dataloader`` over ``self.datasets[split]``.

    Mix in before ``LightningDataModule``. The datamodule fills ``self.datasets`` in ``setup`` and has
    ``hparams.batch_size`` and ``hparams.num_workers``; ``TEST_SPLIT`` is the split that ``test`` and ``predict``
    read (``"val"`` for a dataset without a test set). Override ``_num_workers`` for an automatic worker count.
    """

    TEST_SPLIT = "test"
    datasets: dict[str, Dataset]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.TEST_SPLIT)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.TEST_SPLIT)

    def _num_workers(self) -> int:
        return self.hparams.num_workers or 0  # type: ignore[attr-defined]

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader.")
        workers = self._num_workers()
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,  # type: ignore[attr-defined]
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )
