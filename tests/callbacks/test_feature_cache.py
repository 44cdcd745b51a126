"""FeatureCache: the cached features are the backbone's output, the head trains on them exactly as on the images
(same seed, same weights), and the backbone keeps running when the features would change."""

from __future__ import annotations

import logging

import fake_data
import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import BackboneFinetuning
from callbacks.feature_cache import FeatureCache, extract_features
from datamodules import CatsDogsDataModule
from datamodules.image_datamodule import ImageSplitDataset
from lit_cv.classifier import Classifier
from lit_cv.nets import TransferNet


class BatchShapes(Callback):
    """The number of dimensions of the inputs of every training and validation batch."""

    def __init__(self) -> None:
        self.ndims: set[int] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ndims.add(batch[0].ndim)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.ndims.add(batch[0].ndim)


@pytest.fixture(scope="module")
def cats_dogs(tmp_path_factory):
    return fake_data.make_cats_dogs(tmp_path_factory.mktemp("cats_dogs"), per_class=6, size=72, bad_files=False)


def datamodule(root, augment: bool = False) -> CatsDogsDataModule:
    return CatsDogsDataModule(root, batch_size=4, num_workers=0, image_size=64, cache="memory", augment=augment,
                              val_split=0.25, cache_dir=root / "cache")


def model(finetune: str = "head") -> Classifier:
    net = TransferNet("test_efficientnet", num_classes=1, pretrained=False, finetune=finetune, head_hidden=8)
    return Classifier(net=net, task="binary", num_classes=2)


def fit(root, tmp_path, callbacks, augment=False, finetune="head") -> tuple[Classifier, CatsDogsDataModule, Trainer]:
    seed_everything(0)
    module, dm = model(finetune), datamodule(root, augment)
    trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                      default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(module, datamodule=dm)
    return module, dm, trainer


def test_cached_features_equal_the_backbone_output(cats_dogs):
    dm = datamodule(cats_dogs)
    dm.setup("fit")
    net = TransferNet("test_efficientnet", num_classes=1, pretrained=False, finetune="head").train()
    modes = [m.training for m in net.modules()]
    rng = torch.get_rng_state()
    cached = extract_features(net, dm.datasets["train"], batch_size=3, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded run shuffles as without the cache
    assert [m.training for m in net.modules()] == modes
    images = torch.stack([dm.datasets["train"][i][0] for i in range(len(dm.datasets["train"]))])
    with torch.no_grad():
        expected = net.eval().forward_features(images)
    features, labels = cached.tensors
    assert features.shape == (9, net.num_features)
    torch.testing.assert_close(features, expected)
    assert torch.equal(labels, dm.splits["train"].labels)


def test_the_head_trains_on_cached_features_as_on_images(cats_dogs, tmp_path, caplog):
    shapes = BatchShapes()
    with caplog.at_level(logging.INFO):
        cached, dm, _ = fit(cats_dogs, tmp_path, [FeatureCache(batch_size=5), shapes])
    assert shapes.ndims == {2}  # every training and validation batch was features
    assert "FeatureCache: backbone features of train 9, val 3 images computed once" in caplog.text
    assert all(isinstance(dm.datasets[s], ImageSplitDataset) for s in ("train", "val"))  # images are back
    reference, _, _ = fit(cats_dogs, tmp_path, [])
    assert not torch.equal(cached.net.head[0].weight, model().net.head[0].weight)  # the head did train
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(cached.state_dict()[key], value, msg=key)


@pytest.mark.parametrize(
    ("augment", "finetune", "finetuning", "reason"),
    [
        (True, "head", False, "the train split is augmented"),
        (False, "last_n", False, "its parameters train"),
        (False, "head", True, "BackboneFinetuning will unfreeze it"),
    ],
)
def test_the_backbone_runs_every_epoch_when_its_features_would_change(
    cats_dogs, tmp_path, caplog, augment, finetune, finetuning, reason
):
    shapes = BatchShapes()
    callbacks = [FeatureCache(), shapes]
    if finetuning:
        callbacks.append(BackboneFinetuning(unfreeze_backbone_at_epoch=1, train_bn=False))
    with caplog.at_level(logging.INFO):
        fit(cats_dogs, tmp_path, callbacks, augment=augment, finetune=finetune)
    assert shapes.ndims == {4}
    assert f"FeatureCache: off, the backbone runs every epoch ({reason})." in caplog.text


def test_a_net_without_features_is_refused(cats_dogs, tmp_path):
    module = Classifier(net=nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 1)), task="binary", num_classes=2)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, default_root_dir=tmp_path, callbacks=[FeatureCache()])
    with pytest.raises(TypeError, match=r"lacks \['frozen_features', 'forward_features'\]"):
        trainer.fit(module, datamodule=datamodule(cats_dogs))


def test_dataloaders_without_a_datamodule_are_refused(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])), batch_size=2)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, default_root_dir=tmp_path, callbacks=[FeatureCache()])
    with pytest.raises(TypeError, match="needs a datamodule whose `datasets` dict"):
        trainer.fit(model(), train_dataloaders=data)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        FeatureCache(batch_size=0)
