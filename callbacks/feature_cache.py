"""Fast feature extraction: a frozen backbone runs once over the data, and the head trains on the cached features.

Chollet, *Deep Learning with Python*, 5.3.1, "fast feature extraction without data augmentation": when the
convolutional base is frozen and the images are not augmented, its output for an image never changes, so computing it
every epoch is wasted work. The features of the train and validation splits are computed once, in eval mode without
gradients, and held in memory like the decoded images; every epoch then costs only the head.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

SPLITS = ("train", "val")  # the splits fit reads; test and predict keep their images


@torch.no_grad()
def extract_features(net: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> TensorDataset:
    """``(features, label)`` of every sample of ``dataset`` in order: ``net.forward_features`` in eval mode without
    gradients on ``device``, features and labels on the CPU. The net's train/eval modes and the global RNG states
    are as before, so a seeded run shuffles exactly as it would without the cache."""
    modes = {module: module.training for module in net.modules()}
    features, labels = [], []
    try:
        net.eval()
        with isolate_rng():
            for x, y, *_ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                features.append(net.forward_features(x.to(device)).float().cpu())
                labels.append(torch.as_tensor(y))
    finally:
        for module, training in modes.items():
            module.training = training
    return TensorDataset(torch.cat(features), torch.cat(labels))


class FeatureCache(Callback):
    """At fit start, replace the train and validation images by their backbone features when the backbone is frozen
    and the training images are not augmented; the head then trains on those for every epoch.

    What it needs, read as documented attributes (no import of the net or datamodule classes):

    - of the net at ``net`` (``lit_cv.nets.TransferNet`` has all three): ``frozen_features`` (True when no backbone
      parameter trains and the backbone runs in eval mode), ``forward_features(images)``, and a ``forward`` that
      takes those features in place of images;
    - of the datamodule: ``datasets`` with ``train`` and ``val`` (``datamodules.ImageDataModule``), the train
      dataset's ``transform`` (``None``: no augmentation).

    The backbone runs every epoch as before (the callback says why, once) when it is not frozen, when the train
    split is augmented, or when a ``BaseFinetuning`` callback (``callbacks.BackboneFinetuning``) will unfreeze it.
    The images come back at the end of ``fit``, so ``test`` and ``predict`` see them. Keep the datamodule's
    ``num_workers: 0``: worker processes only slow down indexing a tensor in memory.

    Args:
        net: dotted attribute path of the net in the LightningModule (the ``Classifier``'s is ``net``).
        batch_size: images per backbone forward while extracting.

    Raises:
        ValueError: ``batch_size < 1``.
        TypeError: at fit start, if the net lacks the attributes above or the datamodule has no ``datasets``.

    Example::

        trainer:
          callbacks:
            - class_path: callbacks.FeatureCache

        Trainer(callbacks=[FeatureCache()]).fit(Classifier(net=TransferNet(finetune="head")), datamodule=dm)
    """

    def __init__(self, net: str = "net", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.net_path = net
        self.batch_size = batch_size
        self._images: dict[str, Dataset] = {}  # the datasets replaced during this fit

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        net, datasets = self._net(pl_module), self._datasets(trainer)
        reason = self._reason_to_skip(trainer, net, datasets)
        if reason:
            rank_zero_info(f"FeatureCache: off, the backbone runs every epoch ({reason}).")
            return
        self._cache(net, datasets, pl_module.device)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._images:
            self._datasets(trainer).update(self._images)
            self._images = {}

    def _cache(self, net: nn.Module, datasets: dict[str, Dataset], device: torch.device) -> None:
        start = time.perf_counter()
        for split in SPLITS:
            self._images[split] = datasets[split]
            datasets[split] = extract_features(net, datasets[split], self.batch_size, device)
        sizes = ", ".join(f"{split} {len(datasets[split])}" for split in SPLITS)
        rank_zero_info(
            f"FeatureCache: backbone features of {sizes} images computed once in {time.perf_counter() - start:.1f} s; "
            "the head trains on them."
        )

    @staticmethod
    def _reason_to_skip(trainer: Trainer, net: Any, datasets: dict[str, Dataset]) -> str | None:
        if not net.frozen_features:
            return "its parameters train"
        if getattr(datasets["train"], "transform", None) is not None:
            return "the train split is augmented"
        finetuning = [type(c).__name__ for c in trainer.callbacks if isinstance(c, BaseFinetuning)]
        if finetuning:
            return f"{finetuning[0]} will unfreeze it"
        return None

    def _net(self, pl_module: LightningModule) -> Any:
        net: Any = pl_module
        for part in self.net_path.split("."):
            net = getattr(net, part, None)
        missing = [a for a in ("frozen_features", "forward_features") if not hasattr(net, a)]
        if missing:
            raise TypeError(
                f"FeatureCache needs a net with `frozen_features` and `forward_features` at `{self.net_path}` of "
                f"{type(pl_module).__name__}; {type(net).__name__} lacks {missing}. Use lit_cv.nets.TransferNet, "
                "or set `net:` to the attribute path of such a net."
            )
        return net

    @staticmethod
    def _datasets(trainer: Trainer) -> dict[str, Dataset]:
        datasets = getattr(trainer.datamodule, "datasets", None)
        if not isinstance(datasets, dict) or not all(split in datasets for split in SPLITS):
            raise TypeError(
                "FeatureCache needs a datamodule whose `datasets` dict holds the 'train' and 'val' datasets after "
                f"setup (datamodules.ImageDataModule); got {type(trainer.datamodule).__name__}."
            )
        return datasets
