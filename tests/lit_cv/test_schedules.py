"""Schedules: the LR of every batch of a real training ``Trainer.fit`` and of the preview
(:func:`preview_schedule`, a fit that trains nothing) against closed-form formulas."""

from __future__ import annotations

import csv
import math
from fractions import Fraction
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim.lr_scheduler import (
    CosineAnnealingWarmRestarts,
    CyclicLR,
    ExponentialLR,
    LambdaLR,
    MultiStepLR,
    ReduceLROnPlateau,
    StepLR,
)
from torch.utils.data import DataLoader, TensorDataset

from lit_cv import Classifier
from lit_cv.nets import CNN2
from lit_cv.schedules import (
    StepDecay,
    build_optimizer_and_scheduler,
    has_momentum,
    preview_schedule,
    step_decay,
    step_scheduler,
)

BATCH = 4


class _Random(LightningDataModule):
    """``n_train_batches`` batches of random 1x10x10 images, one validation batch."""

    def __init__(self, n_train_batches: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        n = BATCH * n_train_batches
        self.train = TensorDataset(
            torch.rand(n, 1, 10, 10, generator=g), torch.randint(0, 3, (n,), generator=g)
        )
        self.val = TensorDataset(torch.rand(BATCH, 1, 10, 10, generator=g), torch.arange(BATCH) % 3)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=BATCH)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=BATCH)


def _model(optimizer, lr_scheduler, interval="epoch", frequency=1, cls=Classifier, **kwargs) -> Classifier:
    torch.manual_seed(0)
    net = CNN2(n_feature=2, in_channels=1, num_classes=3, image_size=10, hidden=4)
    return cls(
        net=net,
        num_classes=3,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        scheduler_interval=interval,
        scheduler_frequency=frequency,
        **kwargs,
    )


class LRRecorder(Callback):
    """The lr (and momentum/beta1) the optimizer uses for every training batch."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.momenta: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        group = trainer.optimizers[0].param_groups[0]
        self.lrs.append(group["lr"])
        self.momenta.append(group["betas"][0] if "betas" in group else group.get("momentum", 0.0))


def _fit(
    model, tiny_trainer_kwargs, epochs, batches, val=False, callbacks=(), **trainer_kwargs
) -> LRRecorder:
    recorder = LRRecorder()
    kwargs = {
        **tiny_trainer_kwargs,
        "max_epochs": epochs,
        "limit_train_batches": batches,
        "limit_val_batches": 1 if val else 0,
        "num_sanity_val_steps": 0,
        **trainer_kwargs,
    }
    Trainer(callbacks=[recorder, *callbacks], **kwargs).fit(model, _Random(batches))
    assert len(recorder.lrs) == epochs * batches
    return recorder


def _previewed(build, epochs, batches, **kwargs) -> list[float]:
    return preview_schedule(build(), max_epochs=epochs, batches_per_epoch=batches, **kwargs).lrs


# ------------------------------------------------------------------------------------------- closed forms
def cosine_restarts_lr(t: Fraction, eta_max: float, eta_min: float, t_0: int, t_mult: int) -> float:
    """SGDR at (fractional) epoch t: eta_min + (eta_max - eta_min)(1 + cos(pi T_cur / T_i)) / 2."""
    t_cur, t_i = Fraction(t), Fraction(t_0)
    while t_cur >= t_i:
        t_cur -= t_i
        t_i *= t_mult
    return eta_min + (eta_max - eta_min) * (1 + math.cos(math.pi * float(t_cur / t_i))) / 2


def cyclic_lr(k: int, base: float, peak: float, step_size: int, mode: str, gamma: float = 1.0) -> float:
    """Smith's triangular policy after k iterations."""
    cycle = math.floor(1 + k / (2 * step_size))
    x = abs(k / step_size - 2 * cycle + 1)
    scale = {"triangular": 1.0, "triangular2": 1 / 2 ** (cycle - 1), "exp_range": gamma**k}[mode]
    return base + (peak - base) * max(0.0, 1 - x) * scale


def plateau_lrs(values: list[float], lr: float, factor: float, patience: int) -> list[float]:
    """Per-epoch lr of ReduceLROnPlateau(mode=min, threshold 1e-4 rel) fed ``values`` after each epoch."""
    best, bad, out = math.inf, 0, []
    for v in values:
        out.append(lr)
        if v < best * (1 - 1e-4):
            best, bad = v, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = lr * factor, 0
    return out


# ------------------------------------------------------------------------------------------- plain functions
def test_step_decay_is_the_course_sequence():
    lrs = [0.001 * step_decay(epoch) for epoch in range(10)]
    course = [0.001, 0.001, 0.001, 0.0008, 0.0008, 0.0008, 0.00064, 0.00064, 0.00064, 0.000512]
    assert lrs == pytest.approx(course, rel=1e-12)
    assert StepDecay(0.5, 2)(5) == 0.25


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"drop": 0.0}, "drop must be in"), ({"epochs_drop": 0}, ">= 1")]
)
def test_step_decay_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepDecay(**kwargs)


CYCLIC = partial(CyclicLR, base_lr=0.001, max_lr=0.01, step_size_up=2)


@pytest.mark.parametrize(
    ("optimizer", "name", "why"),
    [
        (partial(torch.optim.Adam, lr=0.1), "torch.optim.Adam", "its beta1 would be cycled instead"),
        (partial(torch.optim.SGD, lr=0.1), "torch.optim.SGD", "momentum is 0"),
    ],
)
def test_cyclic_momentum_cycling_without_momentum_is_refused_with_the_fix(optimizer, name, why):
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert not has_momentum(optimizer(params))
    with pytest.raises(ValueError) as err:
        build_optimizer_and_scheduler(optimizer, CYCLIC, params)
    assert str(err.value) == (
        f"CyclicLR cycles momentum (cycle_momentum: true, torch's default) but {name} has no `momentum` "
        f"({why}); set `cycle_momentum: false` in lr_scheduler.init_args, or use SGD with momentum "
        "(e.g. `momentum: 0.9`)."
    )


def test_cyclic_on_an_optimizer_without_momentum_or_betas_gets_torchs_refusal():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="cycle_momentum"):
        build_optimizer_and_scheduler(partial(torch.optim.Adagrad, lr=0.1), CYCLIC, params)


@pytest.mark.parametrize(
    ("optimizer", "cycle_momentum"),
    [
        (partial(torch.optim.SGD, lr=0.1, momentum=0.9), True),
        (partial(torch.optim.Adam, lr=0.1), False),
        (partial(torch.optim.SGD, lr=0.1), False),
    ],
)
def test_cyclic_builds_as_configured(optimizer, cycle_momentum):
    params = [torch.nn.Parameter(torch.zeros(2))]
    before = optimizer(params).param_groups[0]
    cyclic = partial(CYCLIC, cycle_momentum=cycle_momentum)
    opt, scheduler = build_optimizer_and_scheduler(optimizer, cyclic, params)
    assert scheduler.cycle_momentum is cycle_momentum
    if not cycle_momentum:  # the optimizer's own momentum settings are untouched
        for key in ("betas", "momentum"):
            assert opt.param_groups[0].get(key) == before.get(key)


def test_cosine_restarts_per_step_needs_the_epoch_length():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="limit_train_batches"):
        step_scheduler(
            CosineAnnealingWarmRestarts(opt, T_0=1),
            interval="step",
            epoch=0,
            batch_idx=0,
            batches_per_epoch=float("inf"),
        )


def test_preview_trains_nothing_and_leaves_the_module_as_it_was():
    optimizer = partial(torch.optim.SGD, lr=0.1, weight_decay=0.1)  # would move weights given a gradient
    model = _model(optimizer, partial(StepLR, step_size=1, gamma=0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    preview = preview_schedule(model, max_epochs=2, batches_per_epoch=3)
    assert preview.lrs == [0.1] * 3 + [0.05] * 3
    assert type(model) is Classifier
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_preview_applies_limit_train_batches():
    build = partial(_model, partial(torch.optim.SGD, lr=0.1), partial(StepLR, step_size=1, gamma=0.5))
    preview = preview_schedule(build(), max_epochs=2, batches_per_epoch=10, limit_train_batches=0.5)
    assert preview.batches_per_epoch == 5 and preview.lrs == [0.1] * 5 + [0.05] * 5
    with pytest.raises(ValueError, match="No training batch left"):
        preview_schedule(build(), max_epochs=2, batches_per_epoch=10, limit_train_batches=0)
    with pytest.raises(ValueError, match="must be >= 1"):
        preview_schedule(build(), max_epochs=0, batches_per_epoch=10)


def test_preview_of_plateau_per_batch_fails_as_fit_does():
    model = _model(partial(torch.optim.SGD, lr=0.1), ReduceLROnPlateau, "step")
    with pytest.raises(MisconfigurationException, match="ReduceLROnPlateau conditioned on metric val/loss"):
        preview_schedule(model, max_epochs=2, batches_per_epoch=3)


# ------------------------------------------------------------------------------------------- real fits
def test_cosine_warm_restarts_per_batch_follows_the_course_and_is_logged(tiny_trainer_kwargs, tmp_path):
    eta_max, eta_min, t_0, t_mult, epochs, batches = 0.1, 0.001, 1, 2, 7, 4
    build = partial(
        _model,
        partial(torch.optim.SGD, lr=eta_max),
        partial(CosineAnnealingWarmRestarts, T_0=t_0, T_mult=t_mult, eta_min=eta_min),
        "step",
    )
    logger = CSVLogger(tmp_path, name="lr")
    recorder = _fit(
        build(),
        tiny_trainer_kwargs,
        epochs,
        batches,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[LearningRateMonitor(logging_interval="step")],
    )
    # batch k trains with the lr set after batch k-1 of epoch e: step(e + i / n), the course's fractional
    # epoch
    expected = [eta_max] + [
        cosine_restarts_lr(Fraction(e) + Fraction(i, batches), eta_max, eta_min, t_0, t_mult)
        for e in range(epochs)
        for i in range(batches)
    ][:-1]
    assert recorder.lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)
    restarts = [k for k in range(1, len(expected)) if expected[k] > expected[k - 1]]
    assert restarts == [1 + batches * 1, 1 + batches * 3]  # periods of 1, 2, then 4 epochs
    with open(logger.log_dir + "/metrics.csv") as f:
        logged = [float(row["lr-SGD"]) for row in csv.DictReader(f) if row.get("lr-SGD")]
    assert logged == pytest.approx(expected, rel=1e-6)
    assert _previewed(build, epochs, batches) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_cosine_warm_restarts_per_epoch_is_a_staircase(tiny_trainer_kwargs):
    eta_max, epochs, batches = 0.1, 6, 2
    build = partial(
        _model, partial(torch.optim.SGD, lr=eta_max), partial(CosineAnnealingWarmRestarts, T_0=2), "epoch"
    )
    recorder = _fit(build(), tiny_trainer_kwargs, epochs, batches)
    expected = [
        cosine_restarts_lr(Fraction(e), eta_max, 0.0, 2, 1) for e in range(epochs) for _ in range(batches)
    ]
    assert recorder.lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert _previewed(build, epochs, batches) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_lr_per_batch(mode, tiny_trainer_kwargs):
    base, peak, step_size, gamma, epochs, batches = 0.001, 0.01, 3, 0.9, 3, 5
    cyclic = partial(CyclicLR, base_lr=base, max_lr=peak, step_size_up=step_size, mode=mode, gamma=gamma)
    build = partial(_model, partial(torch.optim.SGD, lr=0.5, momentum=0.9), cyclic, "step")
    recorder = _fit(build(), tiny_trainer_kwargs, epochs, batches)
    expected = [cyclic_lr(k, base, peak, step_size, mode, gamma) for k in range(epochs * batches)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-9)
    if mode == "triangular":  # momentum cycles inversely between max_momentum 0.9 and base_momentum 0.8
        expected_momenta = [0.9 - 0.1 * (lr - base) / (peak - base) for lr in expected]
        assert recorder.momenta == pytest.approx(expected_momenta, rel=1e-9)
    assert _previewed(build, epochs, batches) == pytest.approx(expected, rel=1e-9)


def test_cyclic_lr_with_adam_needs_cycle_momentum_false(tiny_trainer_kwargs):
    with pytest.raises(ValueError, match="set `cycle_momentum: false`"):
        _fit(_model(partial(torch.optim.Adam, lr=0.5), CYCLIC, "step"), tiny_trainer_kwargs, 1, 4)
    no_cycling = partial(CYCLIC, cycle_momentum=False)
    recorder = _fit(_model(partial(torch.optim.Adam, lr=0.5), no_cycling, "step"), tiny_trainer_kwargs, 1, 4)
    assert recorder.lrs == pytest.approx([cyclic_lr(k, 0.001, 0.01, 2, "triangular") for k in range(4)])
    assert recorder.momenta == [0.9] * 4  # beta1 left alone


def test_cyclic_lr_stepped_per_epoch_is_refused(tiny_trainer_kwargs):
    model = _model(partial(torch.optim.SGD, lr=0.1), partial(CYCLIC, cycle_momentum=False), "epoch")
    with pytest.raises(ValueError, match="scheduler_interval: step"):
        _fit(model, tiny_trainer_kwargs, 1, 2)


def test_step_decay_lambda_lr_in_a_fit(tiny_trainer_kwargs):
    build = partial(_model, partial(torch.optim.Adam, lr=0.001), partial(LambdaLR, lr_lambda=step_decay))
    recorder = _fit(build(), tiny_trainer_kwargs, 10, 1)
    expected = [0.001 * 0.8 ** (e // 3) for e in range(10)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-12)
    assert recorder.lrs[9] == pytest.approx(0.000512)
    assert _previewed(build, 10, 1) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("scheduler", "factor"),
    [
        (partial(StepLR, step_size=2, gamma=0.5), lambda e: 0.5 ** (e // 2)),
        (partial(MultiStepLR, milestones=[1, 3], gamma=0.1), lambda e: 0.1 ** sum(m <= e for m in (1, 3))),
    ],
    ids=["StepLR", "MultiStepLR"],
)
def test_step_and_multistep_per_epoch(scheduler, factor, tiny_trainer_kwargs):
    lr, epochs, batches = 0.1, 5, 2
    build = partial(_model, partial(torch.optim.SGD, lr=lr), scheduler)
    recorder = _fit(build(), tiny_trainer_kwargs, epochs, batches)
    expected = [lr * factor(e) for e in range(epochs) for _ in range(batches)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-12)
    assert _previewed(build, epochs, batches) == pytest.approx(expected, rel=1e-12)


def test_step_frequency_counts_batches_within_each_epoch(tiny_trainer_kwargs):
    """Lightning steps after batch i when (i + 1) % frequency == 0, i restarting at 0 every epoch."""
    lr, epochs, batches, every = 0.1, 3, 5, 3
    build = partial(_model, partial(torch.optim.SGD, lr=lr), partial(ExponentialLR, gamma=0.5), "step", every)
    recorder = _fit(build(), tiny_trainer_kwargs, epochs, batches)
    expected = [
        lr * 0.5 ** (e * (batches // every) + b // every) for e in range(epochs) for b in range(batches)
    ]
    assert recorder.lrs == pytest.approx(expected, rel=1e-12)
    assert _previewed(build, epochs, batches) == pytest.approx(expected, rel=1e-12)


def test_gradient_accumulation_in_fit_and_preview(tiny_trainer_kwargs):
    epochs, batches = 2, 5
    build = partial(_model, partial(torch.optim.SGD, lr=0.1), partial(ExponentialLR, gamma=0.5), "step")
    recorder = _fit(build(), tiny_trainer_kwargs, epochs, batches, accumulate_grad_batches=2)
    # optimizer steps after batches 1, 3 and the last batch 4 of each epoch
    expected = [0.1 * 0.5**n for n in (0, 0, 1, 1, 2, 3, 3, 4, 4, 5)]
    assert recorder.lrs == pytest.approx(expected)
    assert _previewed(build, epochs, batches, accumulate_grad_batches=2) == pytest.approx(expected)


class ScriptedValLoss(Classifier):
    """Logs ``val/loss`` from a table (one value per epoch) instead of the real validation loss."""

    def __init__(self, values: list[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.values = values

    def validation_step(self, batch, batch_idx) -> None:
        _, probs, y = self._shared_step(batch)
        self.val_metrics.update(probs, y)
        self.val_confusion.update(probs, y)
        self.log("val/loss", self.values[self.current_epoch], on_epoch=True, batch_size=y.shape[0])


def test_reduce_on_plateau_of_val_loss(tiny_trainer_kwargs):
    values, lr, factor, patience = [1.0, 0.9, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5, 0.4], 0.1, 0.5, 2
    plateau = partial(ReduceLROnPlateau, mode="min", factor=factor, patience=patience)
    build = partial(_model, partial(torch.optim.SGD, lr=lr), plateau, cls=ScriptedValLoss, values=values)
    recorder = _fit(build(), tiny_trainer_kwargs, len(values), 1, val=True)
    expected = plateau_lrs(values, lr, factor, patience)
    assert (
        expected[4] == lr and expected[5] == lr * factor and expected[9] == lr * factor**2
    )  # the table bites
    assert recorder.lrs == pytest.approx(expected, rel=1e-12)
    # the preview's monitor never improves: the earliest reductions
    never_improving = plateau_lrs([1.0] * len(values), lr, factor, patience)
    assert _previewed(build, len(values), 1) == pytest.approx(never_improving, rel=1e-12)
    assert never_improving[:5] == [lr] * 4 + [lr * factor]
