"""EarlyStopping: Lightning's stopping rules, best weights restored at the end of fit (read safely, then validated
again so the final metrics are the restored epoch's), NaN/inf loss stop."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import fake_data
import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from torch.utils.data import DataLoader, TensorDataset

from callbacks import EarlyStopping, MetricsReport
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
        if self.values and not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.log("val/score", self.values[self.current_epoch])  # scripted per epoch of fit only


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
            model.state_dict(), torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"]
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
    resume_from = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert resume_from["global_step"] == 3 * BATCHES  # resumes after epoch 2, the best (1) is in the past
    early = EarlyStopping("val/score", patience=5)
    resumed = Scripted(values)
    trainer = _trainer(
        tiny_trainer_kwargs,
        5,
        [early, ModelCheckpoint(dirpath=tmp_path / "ckpt2", save_top_k=0)],
        checkpointing=True,
    )
    trainer.fit(resumed, _Random(), ckpt_path=tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert early.best_epoch == 1 and early.restored_from == "memory"
    _assert_same(resumed.state_dict(), snapshots.by_epoch[1])


def test_a_monitor_never_finite_keeps_the_last_weights_and_says_why(tiny_trainer_kwargs, tmp_path):
    # ModelCheckpoint still saves a "best" file of NaN scores: restoring it used to report "epoch None".
    early = EarlyStopping("val/score", patience=5)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", save_top_k=1)
    snapshots = WeightSnapshots()
    model = Scripted([math.nan] * 3)
    trainer = _trainer(tiny_trainer_kwargs, 3, [early, checkpoint, snapshots], checkpointing=True)
    with pytest.warns(UserWarning, match=r"`val/score` was never finite .*keeping the last ones"):
        trainer.fit(model, _Random())
    assert early.best_epoch is None and early.restored_from is None
    _assert_same(model.state_dict(), snapshots.by_epoch[max(snapshots.by_epoch)])  # check_finite stops at once


def test_a_resume_into_another_folder_keeps_the_last_weights_not_a_mislabelled_best(tiny_trainer_kwargs, tmp_path):
    # The new folder's ModelCheckpoint starts without the old best, so its "best" file is a worse, later epoch.
    values = [1.0, 0.5, 0.9, 0.8, 0.7]
    first_early = EarlyStopping("val/score", patience=5)
    first = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", save_top_k=1, save_last=True)
    _trainer(tiny_trainer_kwargs, 3, [first_early, first], checkpointing=True).fit(Scripted(values), _Random())
    early = EarlyStopping("val/score", patience=5)
    snapshots = WeightSnapshots()
    other = ModelCheckpoint(dirpath=tmp_path / "ckpt2", monitor="val/score", save_top_k=1)
    resumed = Scripted(values)
    trainer = _trainer(tiny_trainer_kwargs, 5, [early, other, snapshots], checkpointing=True)
    with pytest.warns(UserWarning, match=r"holds val/score=0.7, not the best 0.5 of epoch 1 .*keeping the last"):
        trainer.fit(resumed, _Random(), ckpt_path=tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert early.restored_from is None
    _assert_same(resumed.state_dict(), snapshots.by_epoch[4])


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


class ValidationRecorder(Callback):
    """``trainer.callback_metrics`` after each epoch's validation during fit, by epoch; counts all validations."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, dict[str, float]] = {}
        self.validations = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validations += 1
        if not trainer.sanity_checking:
            self.by_epoch[trainer.current_epoch] = {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.parametrize("source", ["checkpoint", "memory"])
def test_final_metrics_are_the_restored_epochs(source, tiny_trainer_kwargs, tmp_path):
    values, best_epoch, stop_epoch = [1.0, 0.8, 0.9, 0.95, 0.7], 1, 3
    early, recorder, report = EarlyStopping("val/score", patience=2), ValidationRecorder(), MetricsReport()
    callbacks = [early, recorder, report]  # the lit-cv CLI's order: the config's callbacks, then MetricsReport
    if source == "checkpoint":
        callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", save_top_k=1))
    trainer = _trainer(tiny_trainer_kwargs, len(values), callbacks, checkpointing=source == "checkpoint")
    trainer.fit(Scripted(values), _Random())

    assert max(recorder.by_epoch) == stop_epoch and early.best_epoch == best_epoch
    best, last = recorder.by_epoch[best_epoch], recorder.by_epoch[stop_epoch]
    assert best["val/loss"] != last["val/loss"]
    metrics = json.loads((Path(tmp_path) / "metrics.json").read_text())["fit"]["metrics"]
    assert metrics["restored_epoch"] == best_epoch
    for key in ("val/loss", "val/acc", "val/auroc"):  # the restored weights validated again: the best epoch's values
        assert metrics[key] == pytest.approx(best[key], rel=1e-6), key
        assert early.restored_metrics[key] == pytest.approx(best[key], rel=1e-6), key
    assert "train/loss" in metrics  # training metrics are kept (the last epoch's)
    # only the progress bar saw the extra validation: no history entry, no checkpoint, no second report
    assert recorder.validations == len(recorder.by_epoch) and [h["epoch"] for h in report.history] == [0, 1, 2, 3]
    if source == "checkpoint":
        assert [p.name for p in (tmp_path / "ckpt").iterdir()] == [Path(early.restored_from).name]
    assert trainer.state.fn == "fit"


class PlantPayload(Callback):
    """At the end of fit, before EarlyStopping restores, replaces the best checkpoint by one holding a payload."""

    def __init__(self, checkpoint: ModelCheckpoint, marker: Path) -> None:
        self.checkpoint, self.marker = checkpoint, marker

    def on_fit_end(self, trainer, pl_module) -> None:
        path = self.checkpoint.best_model_path
        fake_data.plant_payload(path, self.marker, torch.load(path, weights_only=True))


def test_a_planted_best_checkpoint_is_refused_not_run(tiny_trainer_kwargs, tmp_path):
    marker = tmp_path / "marker"
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", save_top_k=1)
    early, snapshots = EarlyStopping("val/score", patience=2), WeightSnapshots()
    model = Scripted([1.0, 0.8, 0.9, 0.95, 0.7])
    trainer = _trainer(tiny_trainer_kwargs, 5, [PlantPayload(checkpoint, marker), early, snapshots, checkpoint], True)
    with pytest.warns(UserWarning, match=r"not restoring the best weights.*pickled Python object \(exec\)"):
        trainer.fit(model, _Random())
    assert not marker.exists()
    assert early.restored_from is None
    _assert_same(model.state_dict(), snapshots.by_epoch[3])  # the last weights are kept


def test_restored_weights_are_validated_with_the_fits_own_dataloaders(tiny_trainer_kwargs):
    """fit(model, train_dataloaders, val_dataloaders) without a datamodule: the same validation data again."""
    values, best_epoch = [1.0, 0.8, 0.9, 0.95, 0.7], 1
    early, recorder = EarlyStopping("val/score", patience=2), ValidationRecorder()
    data = _Random()
    trainer = _trainer(tiny_trainer_kwargs, len(values), [early, recorder])
    trainer.fit(Scripted(values), train_dataloaders=data.train_dataloader(), val_dataloaders=data.val_dataloader())
    assert early.best_epoch == best_epoch and early.restored_from == "memory"
    assert early.restored_metrics["val/loss"] == pytest.approx(recorder.by_epoch[best_epoch]["val/loss"], rel=1e-6)
    assert float(trainer.callback_metrics["restored_epoch"]) == best_epoch
