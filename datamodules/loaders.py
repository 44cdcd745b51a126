"""The four ``*_dataloader`` hooks, written once for every datamodule of the package.

Splits that are whole tensors (a ``TensorDataset``, a ``Subset`` of one, an image split cached and normalised in
memory: see :func:`split_tensors`) are served a batch at a time: one indexing op per tensor instead of a
``__getitem__`` per sample plus the collation of the samples. On CUDA, small ones live on the device: batches are
indexed there, without workers and without a host-to-device copy per step. Everything else (per-sample
augmentation, memory-mapped or decoded-on-read images) goes through the usual per-sample path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

# splits up to this size (all their tensors) are moved to a CUDA device once instead of copied there every step
DEVICE_CACHE_BYTES = 1 << 30


def check_loader_args(batch_size: int, num_workers: int | None) -> None:
    """Raise a ``ValueError`` for ``batch_size < 1`` or ``num_workers < 0`` (``None`` is allowed: automatic)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 or None (auto), got {num_workers}.")


def split_tensors(dataset: Dataset) -> tuple[torch.Tensor, ...] | None:
    """The tensors whose rows are the samples of ``dataset`` (sample ``i`` is ``tuple(t[i] for t in tensors)``), or
    None when a sample is more than that (per-sample transforms, files, memory maps).

    Knows ``TensorDataset`` and any dataset with a ``tensors`` attribute of that meaning (``None`` when it has no
    such tensors now, see ``ImageSplitDataset.tensors``), a ``Subset`` of either (its rows, copied) and
    :class:`TensorBatches` (its source's).
    """
    if isinstance(dataset, TensorBatches):
        return dataset.split_tensors()
    if isinstance(dataset, Subset):
        inner = split_tensors(dataset.dataset)
        if inner is None:
            return None
        index = torch.as_tensor(dataset.indices, dtype=torch.long)
        return tuple(t[index.to(t.device)] for t in inner)
    tensors = getattr(dataset, "tensors", None)
    if not isinstance(tensors, tuple) or not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    if any(len(t) != len(tensors[0]) for t in tensors):
        return None
    return tensors


def _without_subsets(dataset: Dataset) -> tuple[Dataset, torch.Tensor | None]:
    """``dataset`` with its ``Subset`` wrappers taken off, and the rows of it they select (None: all, in order)."""
    rows = None
    while isinstance(dataset, Subset):
        index = torch.as_tensor(dataset.indices, dtype=torch.long)
        rows = index if rows is None else index[rows]
        dataset = dataset.dataset
    return dataset, rows


class TensorBatches(Dataset):
    """A tensor-backed split served a batch at a time: ``__getitems__(indices)`` (what the DataLoader's fetcher
    calls with a batch's indices) returns the whole batch, ``[t[indices] for t in tensors]``, and
    :func:`collate_batch` passes it through. Samples (``[i]``), the length and the source's attributes stay
    those of ``source``.

    Args:
        source: the split (see :func:`split_tensors`); its tensors are read at every batch, so a normalisation
            changed later (``load_state_dict``) is seen. A ``Subset``'s rows are indexed in its dataset's
            tensors, not copied out per batch.
        device: where to keep the tensors (moved once; ``None``: where they are). Batches come out there.
    """

    def __init__(self, source: Dataset, device: torch.device | None = None) -> None:
        self.source = source
        self.device = device
        self._base, self._rows = _without_subsets(source)
        self._moved: tuple[tuple[int, ...], tuple[torch.Tensor, ...]] | None = None

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.source[index]

    def _tensors_and_rows(self) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """The tensors batches are indexed in and the rows of them that are this split (None: all). On ``device``:
        the split's own rows, moved once (again only when the underlying tensors change)."""
        tensors = split_tensors(self._base)
        if tensors is None:
            raise RuntimeError(f"{type(self.source).__name__} no longer serves whole tensors; rebuild the loader.")
        if self.device is None:
            return tensors, self._rows
        key = tuple(id(t) for t in tensors)
        if self._moved is None or self._moved[0] != key:
            rows = tensors if self._rows is None else tuple(t[self._rows] for t in tensors)
            self._moved = (key, tuple(t.to(self.device) for t in rows))
        return self._moved[1], None

    def split_tensors(self) -> tuple[torch.Tensor, ...]:
        """The source's tensors, on ``device``."""
        tensors, rows = self._tensors_and_rows()
        return tensors if rows is None else tuple(t[rows] for t in tensors)

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        tensors, rows = self._tensors_and_rows()
        index = torch.as_tensor(indices, dtype=torch.long, device=None if rows is not None else tensors[0].device)
        if rows is not None:
            index = rows[index]
        return [t.index_select(0, index) for t in tensors]  # 3-5x faster than t[index] on small batches

    def __getattr__(self, name: str) -> Any:
        if name in ("source", "device", "_base", "_rows", "_moved") or name.startswith("__"):
            raise AttributeError(name)  # not set yet (unpickling in a worker): do not recurse into source
        return getattr(self.source, name)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_moved": None}


def collate_batch(batch: Any) -> Any:
    """The DataLoader's ``collate_fn`` for :class:`TensorBatches`: the batch is already whole."""
    return batch


class DataLoadersMixin:
    """``train_dataloader`` (shuffled) and ``val``/``test``/``predict_dataloader`` over ``self.datasets[split]``.

    Mix in before ``LightningDataModule``. The datamodule fills ``self.datasets`` in ``setup`` and has
    ``hparams.batch_size`` and ``hparams.num_workers``; ``TEST_SPLIT`` is the split that ``test`` and ``predict``
    read (``"val"`` for a dataset without a test set). Override ``_num_workers`` for an automatic worker count.

    Tensor-backed splits (:func:`split_tensors`) are sliced a batch at a time (:class:`TensorBatches`); with
    ``num_workers: null`` on a CUDA device, those up to ``DEVICE_CACHE_BYTES`` are kept on the device, without
    workers. The sampler stays a plain ``RandomSampler`` / ``SequentialSampler`` in a ``BatchSampler``, so
    Lightning swaps in its ``DistributedSampler`` under DDP as usual.
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

    def _device(self) -> torch.device:
        """The device the batches go to: the Trainer's (its rank's GPU under DDP), else the CPU."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _device_resident(self, tensors: tuple[torch.Tensor, ...] | None) -> bool:
        """Keep the split on the CUDA device: tensor-backed, small, and workers left to us (``num_workers: null``)."""
        if tensors is None or self._device().type != "cuda" or self.hparams.num_workers is not None:  # type: ignore[attr-defined]
            return False
        return sum(t.numel() * t.element_size() for t in tensors) <= DEVICE_CACHE_BYTES

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader.")
        dataset = self.datasets[split]
        tensors = split_tensors(dataset)
        on_device = self._device_resident(tensors)
        workers = 0 if on_device else self._num_workers()
        options: dict[str, Any] = {}
        if tensors is not None:
            dataset = TensorBatches(dataset, device=self._device() if on_device else None)
            options["collate_fn"] = collate_batch
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,  # type: ignore[attr-defined]
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=torch.cuda.is_available() and not on_device,
            persistent_workers=workers > 0,
            **options,
        )
