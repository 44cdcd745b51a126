from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import BackboneFinetuning
from lit_cv.classifier import Classifier
from lit_cv.nets import TransferNet

UNFREEZE_AT = 1


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny convolutions run ~15x slower with 2 intra-op threads when other processes share the 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Snapshot(Callback):
    """Records requires_grad, optimizer param groups (by parameter name) and BatchNorm modes at train start and at
    every training batch."""

    def __init__(self) -> None:
        self.at_start: dict | None = None
        self.per_epoch: dict[int, dict] = {}

    @staticmethod
    def take(trainer: Trainer, pl_module: Classifier) -> dict:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        return {
            "requires_grad": {n: p.requires_grad for n, p in pl_module.named_parameters()},
            "groups": [
                (sorted(names[id(p)] for p in g["params"]), g["lr"])
                for g in trainer.optimizers[0].param_groups
            ],
            "bn_training": {
                n: m.training for n, m in pl_module.named_modules() if isinstance(m, nn.BatchNorm2d)
            },
            "modules_training": {n: m.training for n, m in pl_module.named_modules() if n.startswith("net.")},
        }

    def on_train_start(self, trainer, pl_module):
        self.at_start = self.take(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.per_epoch[trainer.current_epoch] = self.take(trainer, pl_module)


def make_model(model_name: str = "test_resnet", finetune: str = "all") -> Classifier:
    net = TransferNet(model_name, num_classes=3, pretrained=False, finetune=finetune)
    return Classifier(net=net, num_classes=3, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, 32, 32, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def fit(
    tmp_path: Path, max_epochs: int, ckpt_path: str | None = None, **model: str
) -> tuple[Classifier, Snapshot, Trainer]:
    seed_everything(0)
    model, snapshot = make_model(**model), Snapshot()
    finetuning = BackboneFinetuning(
        unfreeze_backbone_at_epoch=UNFREEZE_AT, train_bn=False, backbone_initial_lr=1e-3
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=tmp_path,
        callbacks=[finetuning, snapshot, ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)],
    )
    trainer.fit(model, train_dataloaders=loader(), ckpt_path=ckpt_path)
    return model, snapshot, trainer


def test_freezes_until_the_unfreeze_epoch_with_frozen_bn_in_eval(tmp_path):
    model, snapshot, _ = fit(tmp_path, max_epochs=2)
    before, after = snapshot.per_epoch[0], snapshot.per_epoch[1]
    bn = {f"{m}.{p}" for m in before["bn_training"] for p in ("weight", "bias")}
    backbone = [n for n in before["requires_grad"] if n.startswith("net.backbone.")]
    assert bn and bn < set(backbone)
    assert not any(before["requires_grad"][n] for n in backbone)
    assert all(before["requires_grad"][n] for n in before["requires_grad"] if n.startswith("net.head."))
    assert not any(before["bn_training"].values())  # train_bn false: frozen BN in eval
    assert len(before["groups"]) == 1
    # Epoch 1: backbone unfrozen except BatchNorm, added as a second param group at the backbone lr.
    assert [n for n in backbone if after["requires_grad"][n]] == [n for n in backbone if n not in bn]
    assert not any(after["bn_training"].values())
    assert after["groups"][1] == (sorted(n for n in backbone if n not in bn), pytest.approx(1e-3))
    assert len(after["groups"]) == 2
    # Classifier.on_fit_start counted the parameters after the callback froze the backbone.
    total = sum(p.numel() for p in model.parameters())
    assert model.param_counts == {"params/total": total, "params/trainable": 96 * 3 + 3}  # only the head


def test_resume_after_unfreeze_restores_requires_grad_and_param_groups(tmp_path):
    first, _, first_trainer = fit(tmp_path / "a", max_epochs=2)
    checkpointed = Snapshot.take(first_trainer, first)
    ckpt = tmp_path / "a" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 2 * 3  # two epochs of three batches

    resumed, snapshot, _ = fit(tmp_path / "b", max_epochs=3, ckpt_path=str(ckpt))
    assert snapshot.at_start["requires_grad"] == checkpointed["requires_grad"]
    assert snapshot.at_start["groups"] == checkpointed["groups"]
    assert snapshot.at_start["bn_training"] == checkpointed["bn_training"]

    # The resumed run ends exactly where an uninterrupted 3-epoch run ends: the backbone kept training.
    uninterrupted, _, _ = fit(tmp_path / "c", max_epochs=3)
    resumed_state, reference = resumed.state_dict(), uninterrupted.state_dict()
    # (timm zero-initialises each block's last BN scale, and BN stays frozen here, so the stem convs are what moves.)
    moved = resumed.net.backbone.conv1[0].weight - first.net.backbone.conv1[0].weight
    assert moved.abs().max() > 0
    for key, value in reference.items():
        torch.testing.assert_close(resumed_state[key], value, msg=key)


def test_resume_before_unfreeze_keeps_backbone_frozen(tmp_path):
    finetuning_epochs = UNFREEZE_AT  # checkpoint after epoch 0, i.e. before unfreezing
    fit(tmp_path / "a", max_epochs=finetuning_epochs)
    _, snapshot, _ = fit(tmp_path / "b", max_epochs=2, ckpt_path=str(tmp_path / "a" / "last.ckpt"))
    assert not any(v for n, v in snapshot.at_start["requires_grad"].items() if n.startswith("net.backbone."))
    assert len(snapshot.at_start["groups"]) == 1
    assert len(snapshot.per_epoch[1]["groups"]) == 2  # and unfreezes on schedule


def test_missing_backbone_is_reported(tmp_path):
    model = Classifier(net=nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3)), num_classes=3)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[BackboneFinetuning()],
    )
    with pytest.raises(AttributeError, match="no module at `net.backbone`"):
        trainer.fit(model, train_dataloaders=loader())


def test_resume_mid_ramp_of_a_frozen_transfer_net_keeps_the_unfrozen_layers_training(tmp_path):
    """The lite0 gradual config's setting (TransferNet finetune head, BatchNorm frozen) on timm's tiny EfficientNet:
    before unfreezing the whole backbone is in eval mode; a run checkpointed one epoch after unfreezing (the
    backbone's lr still rising) resumes with the same trainable layers, modes, param groups and lrs, and ends where
    an uninterrupted run ends."""
    tiny = {"model_name": "test_efficientnet", "finetune": "head"}
    first, snapshot, first_trainer = fit(tmp_path / "a", max_epochs=2, **tiny)
    frozen_modes = [v for n, v in snapshot.per_epoch[0]["modules_training"].items() if n.startswith("net.backbone")]
    assert not any(frozen_modes)  # the frozen backbone ran in eval mode (dropout and BatchNorm as at inference)
    checkpointed = Snapshot.take(first_trainer, first)
    assert any(v for n, v in checkpointed["modules_training"].items() if n.startswith("net.backbone"))
    assert not any(checkpointed["bn_training"].values())

    resumed, snapshot, _ = fit(tmp_path / "b", max_epochs=3, ckpt_path=str(tmp_path / "a" / "last.ckpt"), **tiny)
    assert snapshot.at_start == checkpointed
    uninterrupted, reference, _ = fit(tmp_path / "c", max_epochs=3, **tiny)
    assert snapshot.per_epoch[2] == reference.per_epoch[2]  # the backbone lr kept rising from where it was
    assert reference.per_epoch[2]["groups"][1][1] > reference.per_epoch[1]["groups"][1][1]
    for key, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)
