"""DataLoadersMixin: the four dataloader hooks, their split, sampler and options; check_loader_args."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)

from datamodules import loaders
from datamodules.loaders import DataLoadersMixin, TensorBatches, check_loader_args, split_tensors


class Toy(DataLoadersMixin, LightningDataModule):
    def __init__(self, batch_size: int = 4, num_workers: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.datasets = {}

    def setup(self, stage: str | None = None) -> None:
        self.datasets = {
            name: TensorDataset(torch.full((n,), float(n)))
            for name, n in (("train", 10), ("val", 6), ("test", 3))
        }


class NoTestSet(Toy):
    TEST_SPLIT = "val"


def test_hooks_read_their_split_with_the_right_sampler():
    dm = Toy(batch_size=4)
    dm.setup()
    loaders = {hook: getattr(dm, f"{hook}_dataloader")() for hook in ("train", "val", "test", "predict")}
    assert {hook: len(loader.dataset) for hook, loader in loaders.items()} == {
        "train": 10,
        "val": 6,
        "test": 3,
        "predict": 3,
    }
    assert isinstance(loaders["train"].sampler, RandomSampler)
    assert all(isinstance(loaders[h].sampler, SequentialSampler) for h in ("val", "test", "predict"))
    assert all(loader.batch_size == 4 for loader in loaders.values())
    assert all(
        is_overridden(f"{hook}_dataloader", dm, LightningDataModule) for hook in loaders
    )  # Lightning sees them


def test_test_split_can_be_the_validation_split():
    dm = NoTestSet()
    dm.setup()
    assert dm.test_dataloader().dataset.source is dm.datasets["val"] is dm.predict_dataloader().dataset.source


def test_tensor_splits_come_as_whole_batches_equal_to_collated_samples():
    x, y = torch.randn(10, 3, 2, 2), torch.arange(10)
    for dataset in (TensorDataset(x, y), Subset(TensorDataset(x, y), [9, 0, 4, 5, 1, 2, 3])):
        dm = Toy(batch_size=3)
        dm.datasets = {"train": dataset, "val": dataset, "test": dataset}
        torch.manual_seed(0)
        sliced = list(dm.train_dataloader())
        torch.manual_seed(0)
        collated = list(DataLoader(dataset, batch_size=3, shuffle=True))  # the same sampler draws
        assert len(sliced) == len(collated) == -(-len(dataset) // 3)
        for (xs, ys), (xc, yc) in zip(sliced, collated):
            assert torch.equal(xs, xc) and torch.equal(ys, yc)


def test_lightning_can_swap_in_a_distributed_sampler():
    """What Lightning does under DDP: rebuild the loader with its sampler; the batch sampler stays a plain one."""
    from lightning.pytorch.utilities.data import _update_dataloader

    dm = Toy(batch_size=2)
    dm.setup()
    loader = dm.val_dataloader()
    assert type(loader.batch_sampler) is BatchSampler
    sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=False)
    rank1 = _update_dataloader(loader, sampler)
    assert isinstance(rank1.dataset, TensorBatches) and [b[0].tolist() for b in rank1] == [[6.0] * 2, [6.0]]


def test_split_tensors_only_for_plain_rows():
    class PerSample(torch.utils.data.Dataset):
        tensors = None  # e.g. an augmented image split

    class Ragged(torch.utils.data.Dataset):
        tensors = (torch.zeros(3), torch.zeros(4))  # not the rows of one sample each

    assert split_tensors(PerSample()) is None and split_tensors(Ragged()) is None
    assert split_tensors(Subset(PerSample(), [0])) is None


@pytest.mark.parametrize(("num_workers", "resident"), [(None, True), (2, False)])
def test_small_splits_live_on_the_cuda_device(monkeypatch, num_workers, resident):
    """The loader chosen on a CUDA device (faked: nothing is moved before a batch is drawn)."""
    monkeypatch.setattr(DataLoadersMixin, "_device", lambda self: torch.device("cuda", 0))
    dm = Toy(num_workers=num_workers)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.dataset.device == (torch.device("cuda", 0) if resident else None)
    assert loader.num_workers == (0 if resident else 2) and loader.pin_memory == (torch.cuda.is_available()
                                                                                   and not resident)
    monkeypatch.setattr(loaders, "DEVICE_CACHE_BYTES", 10 * 4 - 1)  # the 10 floats of the split no longer fit
    assert dm.train_dataloader().dataset.device is None


def test_device_batches_are_indexed_on_the_device():
    batches = TensorBatches(TensorDataset(torch.arange(6.0), torch.arange(6)), device=torch.device("meta"))
    x, y = batches.__getitems__([4, 1])
    assert x.device.type == "meta" and x.shape == (2,) and y.dtype == torch.long
    assert batches[4] == (torch.tensor(4.0), torch.tensor(4))  # single samples stay the source's


@pytest.mark.parametrize(("num_workers", "expected"), [(None, 0), (0, 0), (2, 2)])
def test_worker_options(num_workers, expected):
    dm = Toy(num_workers=num_workers)
    dm.setup()
    loader = dm.val_dataloader()
    assert loader.num_workers == expected and loader.persistent_workers == (expected > 0)
    assert loader.pin_memory == torch.cuda.is_available()


def test_dataloader_before_setup_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"Toy.setup\(\) must run before asking for a dataloader"):
        Toy().train_dataloader()


def test_check_loader_args():
    check_loader_args(1, None)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        check_loader_args(0, 0)
    with pytest.raises(ValueError, match=r"num_workers must be >= 0 or None \(auto\), got -1"):
        check_loader_args(8, -1)
