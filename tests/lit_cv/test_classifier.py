import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_cv import Classifier
from lit_cv.classifier import l1_penalty
from lit_cv.nets import CNN2


class _Blobs(LightningDataModule):
    """Linearly separable 2-D blobs: a learnable toy problem."""

    def __init__(self, num_classes=3, n=96, binary=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        centers = torch.randn(num_classes, 2, generator=g) * 4
        y = torch.arange(n) % num_classes
        x = centers[y] + 0.3 * torch.randn(n, 2, generator=g)
        self.data = TensorDataset(x, y)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=32)

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


class _FigureLogger(Logger):
    """A logger whose ``experiment`` records the figures added to it, as TensorBoard's would show them."""

    def __init__(self):
        super().__init__()
        self.figures = {}

    @property
    def name(self):
        return "figures"

    @property
    def version(self):
        return 0

    @property
    def experiment(self):
        return self

    def add_figure(self, tag, figure, global_step=None):
        self.figures[tag] = figure

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_confusion_matrix_figure_is_logged_and_closed(tiny_trainer_kwargs):
    import matplotlib.pyplot as plt

    logger = _FigureLogger()
    model = Classifier(_linear(3), optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    _fit(model, {**tiny_trainer_kwargs, "logger": logger}, epochs=1)
    figure = logger.figures["val/confusion_matrix"]
    assert not plt.fignum_exists(figure.number)  # closed once logged: long runs do not accumulate figures
