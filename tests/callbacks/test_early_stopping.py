"""EarlyStopping: Lightning's stopping rules, best weights restored at the end of fit, NaN/inf loss stop."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from torch.utils.data import DataLoader, TensorDataset

from callbacks import EarlyStopping
from lit_cv import Classifier
from lit_cv.nets import CNN2

BATCHES = 3  # training batches per epoch


class _Random(LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        n = 4 * BATCHES
        self.train = TensorDataset(torch.rand(n, 1, 10, 10, generator=g), torch.arange(n) % 3)
        self.val = TensorDataset(torch.rand(6, 1, 10, 10, generator=g), torch.arange(6) % 3)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=6)


class Scripted(Classifier):
    """Logs ``val/score`` from a table (one per epoch); optionally a NaN/inf loss at one (epoch, batch)."""

    def __init__(self, values=(), bad_loss_at=None, bad_value=math.nan) -> None:
        torch.manual_seed(0)
        super().__init__(
            net=CNN2(n_feature=2, in_channels=1, num_classes=3, image_size=10, hidden=4),
            num_classes=3,
            optimizer=partial(torch.optim.SGD, lr=0.5),
        )
        self.values = list(values)
        self.bad_loss_at = bad_loss_at
        self.bad_value = bad_value

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if (self.current_epoch, batch_idx) == self.bad_loss_at:
            loss = loss * self.bad_value
        return loss

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.values and not self.trainer.sanity_checking:
            self.log("val/score", self.values[self.current_epoch])


class WeightSnapshots(Callback):
    """The module's weights after each epoch's validation, by epoch."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.by_epoch[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=0, atol=0, msg=key)


def _differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def _trainer(tiny_trainer_kwargs, epochs, callbacks, checkpointing=False):
    kwargs = {
        **tiny_trainer_kwargs,
        "max_epochs": epochs,
        "limit_train_batches": BATCHES,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": checkpointing,
    }
    return Trainer(callbacks=callbacks, **kwargs)


# source of the best weights, values, mode, patience, min_delta, expected stop epoch (None: no stop), best
# epoch
TABLE = [
    ("checkpoint", [1.0, 0.8, 0.9, 0.95, 0.7], "min", 2, 0.0, 3, 1),
    ("memory", [1.0, 0.8, 0.9, 0.95, 0.7], "min", 2, 0.0, 3, 1),
    ("checkpoint", [0.1, 0.5, 0.3, 0.4, 0.2, 0.9], "max", 3, 0.0, 4, 1),
    ("memory", [1.0, 0.95, 0.93, 0.5], "min", 2, 0.1, 2, 2),  # min_delta counts for patience, not for "best"
    ("checkpoint", [1.0, 0.9, 1.2, 1.1], "min", 5, 0.0, None, 1),
]


@pytest.mark.parametrize(
    ("source", "values", "mode", "patience", "min_delta", "stop_epoch", "best_epoch"), TABLE
)
def test_stops_on_patience_and_restores_the_best_epoch(
    source, values, mode, patience, min_delta, stop_epoch, best_epoch, tiny_trainer_kwargs, tmp_path
):
    early = EarlyStopping("val/score", mode=mode, patience=patience, min_delta=min_delta)
    snapshots = WeightSnapshots()
    callbacks = [early, snapshots]
    checkpoint = None
    if source == "checkpoint":
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", mode=mode, save_top_k=1)
        callbacks.append(checkpoint)
    model = Scripted(values)
    trainer = _trainer(tiny_trainer_kwargs, len(values), callbacks, checkpointing=checkpoint is not None)
    trainer.fit(model, _Random())

    last_epoch = max(snapshots.by_epoch)
    assert last_epoch == (stop_epoch if stop_epoch is not None else len(values) - 1)
    assert early.stopped_epoch == (stop_epoch or 0)
    if stop_epoch is not None:
        assert early.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert early.best_epoch == best_epoch
    assert early.best_weights_score == pytest.approx(values[best_epoch])
    if best_epoch != last_epoch:
        assert _differs(
            snapshots.by_epoch[best_epoch], snapshots.by_epoch[last_epoch]
        )  # restoring changes them
    _assert_same(model.state_dict(), snapshots.by_epoch[best_epoch])
    if checkpoint is not None:
        assert early.restored_from == checkpoint.best_model_path
        assert early._best_weights is None  # no second copy in memory
        _assert_same(
            model.state_dict(), torch.load(checkpoint.best_model_path, weights_only=False)["state_dict"]
        )
    else:
        assert early.restored_from == "memory"


def test_restore_best_weights_off_keeps_the_last_weights(tiny_trainer_kwargs):
    early = EarlyStopping("val/score", patience=1, restore_best_weights=False)
    snapshots = WeightSnapshots()
    model = Scripted([1.0, 2.0, 3.0])
    _trainer(tiny_trainer_kwargs, 3, [early, snapshots]).fit(model, _Random())
    assert early.stopped_epoch == 1 and early.restored_from is None
    _assert_same(model.state_dict(), snapshots.by_epoch[1])


@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_non_finite_loss_stops_naming_the_step_and_restores(bad_value, tiny_trainer_kwargs):
    early = EarlyStopping("val/loss", patience=10)
    snapshots = WeightSnapshots()
    batches_seen = []
    counter = Callback()
    counter.on_train_batch_end = lambda trainer, *args: batches_seen.append(trainer.global_step)
    model = Scripted(bad_loss_at=(1, 1), bad_value=bad_value)
    name = "nan" if math.isnan(bad_value) else "inf"
    step = 1 * BATCHES + 1  # epoch 1, batch 1: the optimizer step this batch trains as
    with pytest.warns(
        RuntimeWarning, match=rf"Training loss is {name} at global step {step} \(epoch 1, batch 1\)"
    ):
        _trainer(tiny_trainer_kwargs, 5, [early, snapshots, counter]).fit(model, _Random())
    assert len(batches_seen) == step + 1  # no batch after the bad one
    assert early.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC
    assert early.stopped_epoch == 1 and "global step" in early.stopping_reason_message
    assert early.best_epoch == 0
    _assert_same(model.state_dict(), snapshots.by_epoch[0])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_state_dict_round_trip_and_old_format():
    early = EarlyStopping("val/loss")
    early.wait_count, early.best_weights_score, early.best_epoch = 2, 0.5, 3
    early._best_weights = {"w": torch.ones(2)}
    state = early.state_dict()
    other = EarlyStopping("val/loss")
    other.load_state_dict(state)
    assert (other.wait_count, other.best_weights_score, other.best_epoch) == (2, 0.5, 3)
    assert torch.equal(other._best_weights["w"], torch.ones(2))
    lightning_only = {
        k: v for k, v in state.items() if k not in ("best_weights_score", "best_epoch", "best_weights")
    }
    legacy = EarlyStopping("val/loss")
    legacy.load_state_dict(lightning_only)
    assert legacy.best_epoch is None and legacy._best_weights is None and legacy.wait_count == 2


def test_resumed_run_restores_a_best_epoch_from_before_the_resume(tiny_trainer_kwargs, tmp_path):
    values = [1.0, 0.5, 0.9, 0.8, 0.7]  # best at epoch 1, before the resume point
    last = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    snapshots = WeightSnapshots()
    first = Scripted(values)
    _trainer(
        tiny_trainer_kwargs, 3, [EarlyStopping("val/score", patience=5), last, snapshots], checkpointing=True
    ).fit(first, _Random())
    resume_from = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert resume_from["global_step"] == 3 * BATCHES  # resumes after epoch 2, the best (1) is in the past
    early = EarlyStopping("val/score", patience=5)
    resumed = Scripted(values)
    trainer = _trainer(
        tiny_trainer_kwargs,
        5,
        [early, ModelCheckpoint(dirpath=tmp_path / "ckpt2", save_top_k=0)],
        checkpointing=True,
    )
    trainer.fit(resumed, _Random(), ckpt_path=tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert early.best_epoch == 1 and early.restored_from == "memory"
    _assert_same(resumed.state_dict(), snapshots.by_epoch[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"monitor": ""}, "needs a `monitor`"),
        ({"monitor": "val/loss", "patience": -1}, "patience must be >= 0, got -1"),
        ({"monitor": "val/loss", "min_delta": -0.1}, "min_delta must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)
