import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import BinaryAUROC, MulticlassAUROC

from datamodules.loaders import DataLoadersMixin
from lit_cv import Classifier
from lit_cv.classifier import confusion_image, defined_auroc, flip_averaged_logits, l1_penalty
from lit_cv.nets import CNN2


class _Blobs(LightningDataModule):
    """Linearly separable 2-D blobs: a learnable toy problem (``sorted_val``: validation sorted by class)."""

    def __init__(self, num_classes=3, n=96, binary=False, sorted_val=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        centers = torch.randn(num_classes, 2, generator=g) * 4
        y = torch.arange(n) % num_classes
        x = centers[y] + 0.3 * torch.randn(n, 2, generator=g)
        self.data = TensorDataset(x, y)
        order = torch.argsort(y, stable=True) if sorted_val else torch.arange(n)
        self.val_data = TensorDataset(x[order], y[order])

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_data, batch_size=32)

    def test_dataloader(self):
        return self.val_dataloader()


def _linear(out_features):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, out_features))


def test_multiclass_step_matches_cross_entropy():
    model = Classifier(_linear(3), num_classes=3)
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 2, 1, 0])
    loss, probs, _ = model._shared_step((x, y))
    logits = model.net(x)
    assert torch.allclose(loss, F.cross_entropy(logits, y))
    assert torch.allclose(probs, torch.softmax(logits, 1))


def test_binary_step_matches_bce_with_logits():
    model = Classifier(_linear(1), task="binary", num_classes=2)
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 0])
    loss, probs, _ = model._shared_step((x, y))
    logits = model.net(x).squeeze(1)
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, y.float()))
    assert torch.allclose(probs, torch.sigmoid(logits))
    out = model.predict_step((x, y), 0)
    assert out["probs"].shape == (6, 2) and torch.allclose(out["probs"].sum(1), torch.ones(6))
    assert torch.equal(out["preds"], (torch.sigmoid(logits) >= 0.5).long())


def test_wrong_logit_width_names_the_fix():
    model = Classifier(_linear(3), task="binary", num_classes=2)
    with pytest.raises(ValueError, match=r"logits of shape \(4, 3\).*num_classes to 1"):
        model._shared_step((torch.randn(4, 2), torch.zeros(4)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "binary", "num_classes": 3}, "binary needs num_classes == 2"),
        ({"task": "regression"}, "Unknown task"),
        ({"scheduler_interval": "batch"}, "scheduler_interval must be one of"),
        ({"l1_lambda": -1.0}, "l1_lambda must be >= 0"),
        ({"num_classes": 3, "class_names": ["a", "b"]}, "class_names has 2 names"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Classifier(_linear(3), **kwargs)


def test_l1_term_is_lambda_times_sum_abs_weights_only():
    torch.manual_seed(0)
    net = CNN2(n_feature=5)
    x, y = torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 0])
    plain = Classifier(net, l1_lambda=0.0)
    l1 = Classifier(net, l1_lambda=1e-3)
    weights = [net.conv1.weight, net.conv2.weight, net.fc1.weight, net.fc2.weight]
    expected = 1e-3 * sum(w.abs().sum() for w in weights)
    plain.trainer, l1.trainer = None, None
    base = plain._shared_step((x, y))[0]
    penalised = base + l1.l1_lambda * l1_penalty(net)
    assert torch.allclose(penalised - base, expected)
    biases = sum(b.abs().sum() for b in [net.conv1.bias, net.conv2.bias, net.fc1.bias, net.fc2.bias])
    assert not torch.allclose(l1_penalty(net), expected / 1e-3 + biases)  # biases are not included


class _RecordLR(Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(model, tiny_trainer_kwargs, epochs=3, callbacks=()):
    trainer = Trainer(**{**tiny_trainer_kwargs, "max_epochs": epochs, "limit_train_batches": None,
                         "limit_val_batches": None}, callbacks=list(callbacks))
    trainer.fit(model, datamodule=_Blobs())
    return trainer


def test_loss_decreases_on_learnable_problem(tiny_trainer_kwargs):
    model = Classifier(_linear(3), optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    dm = _Blobs()
    x, y = dm.data.tensors
    before = F.cross_entropy(model.net(x), y).item()
    trainer = _fit(model, tiny_trainer_kwargs)
    after = F.cross_entropy(model.net(x), y).item()
    assert after < 0.5 * before
    assert trainer.callback_metrics["val/acc"] > 0.9
    assert set(model.confusion) == {"val"} and int(model.confusion["val"].sum()) == len(y)


def test_step_interval_changes_lr_every_batch(tiny_trainer_kwargs):
    def cyclic(opt):
        return torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.001, max_lr=0.01, step_size_up=4,
                                                 cycle_momentum=False)

    recorder = _RecordLR()
    model = Classifier(_linear(3), optimizer=lambda p: torch.optim.Adam(p, lr=0.001), lr_scheduler=cyclic,
                       scheduler_interval="step")
    _fit(model, tiny_trainer_kwargs, epochs=1, callbacks=[recorder])
    expected = [0.001 + (0.01 - 0.001) * (1 - abs(i / 4 % 2 - 1)) for i in range(6)]
    assert recorder.lrs == pytest.approx(expected)


def test_per_step_scheduler_stepped_per_epoch_is_refused(tiny_trainer_kwargs):
    model = Classifier(
        _linear(3),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10),
        scheduler_interval="epoch",
    )
    with pytest.raises(ValueError, match="scheduler_interval: step"):
        _fit(model, tiny_trainer_kwargs, epochs=1)


class _Planted:
    """Runs code when unpickled: a checkpoint carrying it must be refused."""

    def __reduce__(self):
        return (Path.touch, (Path.cwd() / "PLANTED",))


def test_load_from_checkpoint_never_unpickles_objects_even_when_forced(tiny_trainer_kwargs, tmp_path, monkeypatch):
    # Lightning turns weights_only=None into False under this variable.
    trainer = _fit(Classifier(_linear(3)), tiny_trainer_kwargs, epochs=1)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    planted = torch.load(tmp_path / "model.ckpt", weights_only=True)
    planted["extra"] = _Planted()
    torch.save(planted, tmp_path / "planted.ckpt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        Classifier.load_from_checkpoint(tmp_path / "planted.ckpt", net=_linear(3))
    assert not (tmp_path / "PLANTED").exists()
    assert Classifier.load_from_checkpoint(tmp_path / "model.ckpt", net=_linear(3)).hparams.num_classes == 3


def test_plateau_scheduler_gets_monitor(tiny_trainer_kwargs):
    model = Classifier(_linear(3), lr_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt))
    model.trainer = None
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/loss" and config["lr_scheduler"]["interval"] == "epoch"


def test_checkpoint_reload_predicts_identically(tiny_trainer_kwargs, tmp_path):
    model = Classifier(_linear(3), optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    trainer = _fit(model, tiny_trainer_kwargs, epochs=1)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = Classifier.load_from_checkpoint(path, net=_linear(3), weights_only=True)
    x = _Blobs().data.tensors[0]
    model.eval(), reloaded.eval()
    assert torch.equal(model.predict_proba(x), reloaded.predict_proba(x))
    assert reloaded.hparams.num_classes == 3 and not {"net", "optimizer"} & set(reloaded.hparams)


class _ImageLogger(Logger):
    """A logger whose ``experiment`` records the images added to it and the steps of the metrics logged."""

    def __init__(self):
        super().__init__()
        self.images = {}
        self.steps = {}

    @property
    def name(self):
        return "images"

    @property
    def version(self):
        return 0

    @property
    def experiment(self):
        return self

    def add_image(self, tag, image, global_step=None):
        self.images[tag] = image

    def log_metrics(self, metrics, step=None):
        for name in metrics:
            self.steps.setdefault(name, []).append(step)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_confusion_matrix_image_is_logged(tiny_trainer_kwargs):
    logger = _ImageLogger()
    model = Classifier(_linear(3), optimizer=lambda p: torch.optim.Adam(p, lr=0.05), class_names=["a", "b", "c"])
    _fit(model, {**tiny_trainer_kwargs, "logger": logger}, epochs=1)
    image = logger.images["val/confusion_matrix"]
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3 and min(image.shape[1:]) > 100


def test_confusion_image_shades_cells_by_their_share_of_the_row():
    image = confusion_image(torch.tensor([[9, 1], [0, 10]]), ["no", "yes"]).permute(1, 2, 0)
    whites = (image == 255).all(dim=-1)
    blue = (image[..., 0] < 60) & (image[..., 2] > 150)  # full-share cells: matplotlib's C0 blue
    assert blue.sum() > 1000 and whites.sum() > blue.sum()  # two full cells, white margins and the empty cell


def test_batch_loss_is_logged_only_on_the_steps_lightning_writes(tiny_trainer_kwargs):
    logger = _ImageLogger()
    model = Classifier(_linear(3), optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    _fit(model, {**tiny_trainer_kwargs, "logger": logger, "log_every_n_steps": 2}, epochs=2)  # 6 batches/epoch
    assert logger.steps["train/batch_loss"] == [1, 3, 5, 7, 9, 11]  # as when logged every step
    assert logger.steps["train/loss"] == [5, 11] and logger.steps["val/acc_class/2"] == [5, 11]


# ---------------------------------------------------------------------------------------------------- AUROC
def test_defined_auroc_matches_torchmetrics_when_every_class_is_present():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(60, 4, generator=g), 1)
    labels = torch.arange(60) % 4
    assert defined_auroc(probs, labels) == pytest.approx(float(MulticlassAUROC(4)(probs, labels)), abs=1e-6)
    binary = probs[:, 1]
    assert defined_auroc(binary, labels % 2) == pytest.approx(float(BinaryAUROC()(binary, labels % 2)), abs=1e-6)


def test_defined_auroc_skips_undefined_classes_without_warning():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    labels = torch.tensor([0, 1, 0, 1])  # class 2 absent: its one-vs-rest AUROC is undefined
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchmetrics would warn "No positive samples in targets"
        assert defined_auroc(probs, labels) == pytest.approx(1.0)
        assert torch.isnan(defined_auroc(probs, torch.zeros(4, dtype=torch.long)))  # one class only
        assert torch.isnan(defined_auroc(probs[:, 0], torch.ones(4, dtype=torch.long)))


def test_sanity_check_on_a_sorted_validation_set_warns_nothing(tiny_trainer_kwargs):
    """The first validation batches of a class-sorted split hold one class: AUROC is undefined there."""
    model = Classifier(_linear(3), optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(positive|negative) samples")
        Trainer(**{**tiny_trainer_kwargs, "num_sanity_val_steps": 1, "limit_val_batches": 1}).fit(
            model, datamodule=_Blobs(sorted_val=True))


# ---------------------------------------------------------------------------------------------------- DDP
class _ReadMetricsOnRankZero(Callback):
    """What a progress bar (or any rank-zero-only code) does: read the metrics in the hooks that run before the
    module's epoch-end hooks, on rank 0 only. Records this rank's warnings about unreduced values to a file."""

    def __init__(self, folder):
        self.folder = folder
        self._warnings = None

    def setup(self, trainer, pl_module, stage):
        self._catcher = warnings.catch_warnings(record=True)
        self._warnings = self._catcher.__enter__()
        warnings.simplefilter("always")

    def _read(self, trainer):
        if trainer.global_rank == 0:
            self.read = (trainer.progress_bar_metrics, trainer.callback_metrics, trainer.logged_metrics)

    def on_train_epoch_end(self, trainer, pl_module):
        self._read(trainer)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._read(trainer)

    def on_validation_end(self, trainer, pl_module):
        self._read(trainer)

    def teardown(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        self._catcher.__exit__(None, None, None)
        messages = [str(w.message) for w in self._warnings if "sync_dist" in str(w.message)]
        (self.folder / f"warnings_rank{trainer.global_rank}.txt").write_text("\n".join(messages))
        values = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (self.folder / f"metrics_rank{trainer.global_rank}.json").write_text(json.dumps(values))


class _TensorBlobs(DataLoadersMixin, LightningDataModule):
    """The blobs through the package's loaders: TensorBatches, re-sampled by Lightning's DistributedSampler."""

    def __init__(self):
        super().__init__()
        self.save_hyperparameters({"batch_size": 8, "num_workers": None})
        self.datasets = {"train": _Blobs().data, "val": _Blobs(n=48).data}


@pytest.mark.slow
def test_two_process_ddp_with_rank_zero_readers_finishes_with_global_metrics(tmp_path, tiny_trainer_kwargs):
    """Before: rank 0's reads ran Lightning's lazy all_reduce of `train/loss` while rank 1 sat in the metrics'
    all_gather: a deadlock (here: the gloo timeout). Now every collective runs in the module's epoch-end hooks."""
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    torch.manual_seed(0)
    model = Classifier(_linear(3), optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    kwargs = {**tiny_trainer_kwargs, "devices": 2, "max_epochs": 2, "limit_train_batches": None,
              "limit_val_batches": None, "num_sanity_val_steps": 2, "deterministic": False}
    strategy = DDPStrategy(start_method="fork", timeout=timedelta(seconds=60))
    Trainer(**kwargs, strategy=strategy, callbacks=[_ReadMetricsOnRankZero(tmp_path)]).fit(model, _TensorBlobs())

    assert [(tmp_path / f"warnings_rank{r}.txt").read_text() for r in (0, 1)] == ["", ""]
    ranks = [json.loads((tmp_path / f"metrics_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and "val/acc_class/2" in ranks[0]  # every rank has the global values
    # the same model validated in one process, on the whole validation set, gives the same numbers
    single = Trainer(**{**kwargs, "devices": 1}).validate(model, _TensorBlobs(), verbose=False)[0]
    for name in ("val/loss", "val/acc", "val/f1", "val/auroc", "val/acc_class/0"):
        assert ranks[0][name] == pytest.approx(single[name], abs=1e-6), name


# ---------------------------------------------------------------------------------------------------- warnings
UNACTIONABLE = ("No positive samples", "No negative samples", "LeafSpec", "Total FLOPs: 0", "sync_dist=True")


@pytest.mark.slow
def test_a_normal_run_prints_no_warning_a_user_cannot_act_on(tmp_path):
    """`lit-cv fit` of the quickstart as users run it (progress bar and model summary on), shortened."""
    from subprocess_runs import QUICKSTART, fast_config, run

    fast_config(tmp_path, max_epochs=1, enable_progress_bar=True, enable_model_summary=True)
    output = run(["fit", "--config", QUICKSTART, "--config", "fast.yaml"], cwd=tmp_path)
    assert [text for text in UNACTIONABLE if text in output] == []
    assert "Total FLOPs:" in output  # the summary ran, with an example input


def test_lightnings_hook_name_is_a_plain_attribute_write_and_modules_still_register(monkeypatch):
    """Lightning sets ``_current_fx_name`` twice per hook call: the Classifier writes it without nn.Module's checks,
    while parameters and modules still go through them (and a fit still leaves Lightning's bookkeeping as it was)."""
    model = Classifier(_linear(3), num_classes=3)
    extra, scale = nn.Linear(1, 1), nn.Parameter(torch.ones(1))
    calls = []
    original = nn.Module.__setattr__
    monkeypatch.setattr(nn.Module, "__setattr__",
                        lambda self, name, value: (calls.append(name), original(self, name, value))[1])
    model._current_fx_name = "training_step"
    assert model._current_fx_name == "training_step" and calls == []
    model.extra, model.scale = extra, scale
    assert calls == ["extra", "scale"] and "extra" in model._modules and "scale" in model._parameters
    monkeypatch.undo()
    model = Classifier(_linear(3), num_classes=3)
    Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False).fit(model, _Blobs())  # bar off: output unread
    assert model._current_fx_name is None and model.global_step == 2


def _cnn2():
    torch.manual_seed(0)
    return CNN2(n_feature=3, p=0.0, num_classes=3)


def test_flip_averaged_logits_is_the_mean_over_the_image_and_its_mirror():
    net = _cnn2().eval()
    x = torch.rand(4, 3, 28, 28)
    mirrored = x.flip(-1)
    assert not torch.allclose(net(x), net(mirrored))  # the net is not mirror-symmetric: the average changes things
    assert torch.allclose(flip_averaged_logits(net, x), (net(x) + net(mirrored)) / 2)
    assert torch.allclose(flip_averaged_logits(net, x), flip_averaged_logits(net, mirrored), atol=1e-6)


def test_test_time_flip_scores_evaluation_only():
    model = Classifier(_cnn2(), num_classes=3, test_time_flip=True)
    x = torch.rand(2, 3, 28, 28)
    model.train()
    assert torch.equal(model(x), model.net(x))  # training sees the images as they are
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), flip_averaged_logits(model.net, x))
        assert torch.allclose(model.predict_proba(x), model.predict_proba(x.flip(-1)), atol=1e-6)
    assert Classifier(_cnn2(), num_classes=3).eval()(x).equal(model.net(x))  # off by default


def test_test_time_flip_on_tabular_rows_names_the_setting():
    model = Classifier(_linear(3), num_classes=3, test_time_flip=True).eval()
    with pytest.raises(ValueError, match=r"shape \(5, 2\).*test_time_flip: false"):
        model(torch.rand(5, 2))
