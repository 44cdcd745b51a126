"""DataLoadersMixin: the four dataloader hooks, their split, sampler and options; check_loader_args."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import RandomSampler, SequentialSampler, TensorDataset

from datamodules.loaders import DataLoadersMixin, check_loader_args


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
    assert dm.test_dataloader().dataset is dm.datasets["val"] is dm.predict_dataloader().dataset


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
