"""Learning-rate schedules: the course's step decay, building and stepping a scheduler, a schedule preview.

- :func:`step_decay` / :class:`StepDecay`: the course's step decay factor for ``LambdaLR``;
- :func:`build_optimizer_and_scheduler`: both from their factories, refusing a CyclicLR that would cycle a
  momentum the optimizer does not have;
- :func:`step_scheduler`: one scheduler step, as :meth:`lit_cv.Classifier.lr_scheduler_step` takes it;
- :func:`preview_schedule`: the learning rate of every training batch, from a real ``Trainer.fit`` of the
  module in which nothing is trained (``lit-cv plot-schedule`` draws it).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.types import LRSchedulerConfig
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, CyclicLR
from torch.utils.data import DataLoader

# The value a preview logs for every ReduceLROnPlateau monitor: constant, so it never improves.
PLATEAU_PREVIEW_VALUE = 1.0


# ---------------------------------------------------------------------------------------------- step decay
def step_decay(epoch: int, drop: float = 0.8, epochs_drop: int = 3) -> float:
    """The course's step decay factor ``drop ** (epoch // epochs_drop)``, by which ``LambdaLR`` scales the lr.

    With lr 0.001: 0.001, 0.001, 0.001, 0.0008, ..., 0.000512 at epoch 9. YAML (the course's defaults)::

        lr_scheduler:
          class_path: torch.optim.lr_scheduler.LambdaLR
          init_args: {lr_lambda: lit_cv.schedules.step_decay}
    """
    return drop ** (epoch // epochs_drop)


class StepDecay:
    """:func:`step_decay` with its own ``drop`` and ``epochs_drop``, for YAML; ``LambdaLR`` saves its state.

    Args:
        drop: factor applied every ``epochs_drop`` epochs, in (0, 1].
        epochs_drop: epochs between two drops, >= 1.

    Raises:
        ValueError: for a ``drop`` outside (0, 1] or ``epochs_drop < 1``.

    Example::

        lr_scheduler:
          class_path: torch.optim.lr_scheduler.LambdaLR
          init_args:
            lr_lambda:
              class_path: lit_cv.schedules.StepDecay
              init_args: {drop: 0.5, epochs_drop: 10}
    """

    def __init__(self, drop: float = 0.8, epochs_drop: int = 3) -> None:
        if not 0.0 < drop <= 1.0:
            raise ValueError(f"StepDecay drop must be in (0, 1], got {drop}.")
        if epochs_drop < 1:
            raise ValueError(f"StepDecay epochs_drop must be >= 1, got {epochs_drop}.")
        self.drop = drop
        self.epochs_drop = epochs_drop

    def __call__(self, epoch: int) -> float:
        return step_decay(epoch, self.drop, self.epochs_drop)

    def __repr__(self) -> str:
        return f"StepDecay(drop={self.drop}, epochs_drop={self.epochs_drop})"


# ---------------------------------------------------------------------------------------------- building
def has_momentum(optimizer: Optimizer) -> bool:
    """True when a param group has a non-zero ``momentum`` (SGD/RMSprop with momentum) for CyclicLR to cycle.

    Adam-like optimizers (``betas``) and plain SGD count as momentum-free: torch's CyclicLR would cycle Adam's
    beta1, or switch momentum *on* (0.8-0.9) for an SGD configured without it.
    """
    return any(float(group.get("momentum", 0.0) or 0.0) > 0.0 for group in optimizer.param_groups)


def build_optimizer_and_scheduler(
    optimizer_factory: Callable[..., Optimizer],
    scheduler_factory: Callable[..., Any] | None,
    params: Sequence[Any],
) -> tuple[Optimizer, Any]:
    """Build the optimizer on ``params`` (tensors, or param groups whose ``lr_scale`` multiplies the optimizer's
    lr) and the scheduler on it (``None`` without a scheduler factory).

    Raises:
        ValueError: for a CyclicLR that cycles momentum (``cycle_momentum``, torch's default) on an optimizer
            without momentum (see :func:`has_momentum`); the message says to set ``cycle_momentum: false``.
            An optimizer with neither ``momentum`` nor ``betas`` (Adagrad) gets torch's own refusal.
    """
    optimizer = optimizer_factory(list(params))
    for group in optimizer.param_groups:  # a net's param groups may ask for a share of the lr (TransferNet's backbone)
        group["lr"] *= group.pop("lr_scale", 1.0)
    if scheduler_factory is None:
        return optimizer, None
    momentum = has_momentum(optimizer)  # before CyclicLR writes its own momentum into the param groups
    scheduler = scheduler_factory(optimizer)
    if isinstance(scheduler, CyclicLR) and scheduler.cycle_momentum and not momentum:
        instead = "its beta1 would be cycled instead" if "betas" in optimizer.defaults else "momentum is 0"
        raise ValueError(
            "CyclicLR cycles momentum (cycle_momentum: true, torch's default) but "
            f"{_class_path(optimizer)} has no `momentum` ({instead}); set `cycle_momentum: false` in "
            "lr_scheduler.init_args, or use SGD with momentum (e.g. `momentum: 0.9`)."
        )
    return optimizer, scheduler


def _class_path(obj: Any) -> str:
    cls = type(obj)
    if getattr(torch.optim, cls.__name__, None) is cls:
        return f"torch.optim.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------------------------------- stepping
def step_scheduler(
    scheduler: Any,
    metric: Any = None,
    *,
    interval: str,
    epoch: int,
    batch_idx: int,
    batches_per_epoch: float,
) -> None:
    """One scheduler step, as :meth:`lit_cv.Classifier.lr_scheduler_step` takes it.

    ``CosineAnnealingWarmRestarts`` stepped every batch (``interval="step"``) gets the course's fractional
    epoch ``epoch + batch_idx / batches_per_epoch`` (``batch_idx``: the batch just trained, 0-based within
    ``epoch``), so its ``T_0`` counts epochs and the curve is smooth within them; stepped per epoch it gets a
    plain ``step()``. The epoch is 0-based (as in torch's docstring): epoch 0 starts at ``eta_max``.
    ReduceLROnPlateau gets ``metric``; the rest ``step()``.

    Raises:
        ValueError: if a fractional epoch is needed and ``batches_per_epoch`` is unknown (an unsized
            dataloader).
    """
    if isinstance(scheduler, CosineAnnealingWarmRestarts) and interval == "step":
        if not 0 < batches_per_epoch < float("inf"):
            raise ValueError(
                f"CosineAnnealingWarmRestarts stepped every batch needs the number of batches per epoch, got "
                f"{batches_per_epoch}. Give the train dataloader a length or set "
                "`trainer.limit_train_batches` to an int."
            )
        scheduler.step(epoch + batch_idx / batches_per_epoch)
    elif metric is None:
        scheduler.step()
    else:
        scheduler.step(metric)


# ---------------------------------------------------------------------------------------------- preview
@dataclass
class SchedulePreview:
    """What :func:`preview_schedule` saw: the lr of every training batch and what set it."""

    lrs: list[float]  # entry i: the lr (param group 0) that training batch i used
    batches_per_epoch: int  # after ``limit_train_batches``
    optimizer: Optimizer
    lr_scheduler_configs: list[LRSchedulerConfig]  # interval, frequency, monitor of each scheduler


class _LRRecorder(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.lrs.append(float(trainer.optimizers[0].param_groups[0]["lr"]))


class _NoWork:
    """Hooks that replace a module's work during a preview: a zero loss, a never-improving plateau monitor."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # backward reaches no parameter, so the optimizer steps change nothing
        return torch.zeros((), requires_grad=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.reduce_on_plateau:
                self.log(config.monitor, PLATEAU_PREVIEW_VALUE, batch_size=1)

    def on_fit_start(self) -> None:
        pass

    def on_train_epoch_end(self) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        pass


@contextmanager
def _without_work(module: LightningModule) -> Iterator[LightningModule]:
    """``module`` with the :class:`_NoWork` hooks in front of its own, restored on exit."""
    cls = type(module)
    module.__class__ = type(f"{cls.__name__}Preview", (_NoWork, cls), {})
    try:
        yield module
    finally:
        module.__class__ = cls


@contextmanager
def _quiet() -> Iterator[None]:
    """Without Lightning's device and dataloader notes: they describe the preview run, not the config."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PossibleUserWarning)
        # Workaround, see docs/lightning-workarounds.md (LeafSpec FutureWarning, Lightning #21326)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        for log in loggers:
            log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)


def preview_schedule(
    module: LightningModule,
    *,
    max_epochs: int,
    batches_per_epoch: int,
    limit_train_batches: float | None = None,
    accumulate_grad_batches: int = 1,
) -> SchedulePreview:
    """The learning rate of every training batch of a ``fit`` of ``module``, without training it.

    Runs a real CPU ``Trainer.fit`` of ``module`` (no logger, checkpoints, progress bar, sanity check or
    callbacks) with :class:`_NoWork` hooks, over ``batches_per_epoch`` empty batches and one validation batch
    per epoch, so Lightning itself steps the schedulers of ``module.configure_optimizers()`` (interval,
    frequency, gradient accumulation, ``module.lr_scheduler_step``). ReduceLROnPlateau sees a monitor that
    never improves: the earliest reductions it can make. The weights are not changed.

    Args:
        module: the configured LightningModule.
        max_epochs: epochs to run.
        batches_per_epoch: training batches per epoch and device, before ``limit_train_batches``.
        limit_train_batches: the Trainer's ``limit_train_batches``, applied by Lightning.
        accumulate_grad_batches: the Trainer's gradient accumulation.

    Raises:
        ValueError: for ``max_epochs`` or ``batches_per_epoch`` below 1, or no training batch left after
            ``limit_train_batches``; whatever the schedule raises during ``fit`` (too few ``total_steps``,
            a CyclicLR refused by :func:`build_optimizer_and_scheduler`, ...).
        lightning.pytorch.utilities.exceptions.MisconfigurationException: where Lightning's ``fit`` raises it
            (a ReduceLROnPlateau stepped per batch before its monitor is first computed, ...).
    """
    if max_epochs < 1 or batches_per_epoch < 1:
        raise ValueError(
            f"max_epochs and batches_per_epoch must be >= 1, got {max_epochs} and {batches_per_epoch}."
        )
    recorder = _LRRecorder()
    with tempfile.TemporaryDirectory() as root, _quiet(), _without_work(module):
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=max_epochs,
            limit_train_batches=limit_train_batches,
            accumulate_grad_batches=accumulate_grad_batches,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[recorder],
            default_root_dir=root,
        )
        trainer.fit(
            module,
            train_dataloaders=DataLoader(torch.zeros(batches_per_epoch)),
            val_dataloaders=DataLoader(torch.zeros(1)),
        )
    if not recorder.lrs:
        raise ValueError(
            f"No training batch left: limit_train_batches {limit_train_batches} of {batches_per_epoch} "
            "batches. Set `trainer.limit_train_batches` to a positive value."
        )
    return SchedulePreview(recorder.lrs, trainer.num_training_batches, trainer.optimizers[0],
                           trainer.lr_scheduler_configs)
