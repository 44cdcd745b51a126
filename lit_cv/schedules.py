"""Learning-rate schedules: the course's step decay, scheduler stepping as lit-cv does it, and a dry run.

The :class:`~lit_cv.Classifier` builds its scheduler from YAML (``model.lr_scheduler``) and Lightning steps it
every ``scheduler_interval`` (``epoch`` or ``step``) x ``scheduler_frequency``. This module holds the plain
functions behind that wiring so they can be tested and reused without a Trainer:

- :func:`step_decay` / :class:`StepDecay`: the course's step decay factor for ``LambdaLR``
  (x0.8 every 3 epochs: with lr 0.001 -> 0.001, 0.001, 0.001, 0.0008, ..., 0.000512 at epoch 9);
- :func:`build_optimizer_and_scheduler`: builds both from their factories, switching CyclicLR's momentum
  cycling off for optimizers that have no momentum to cycle (Adam, plain SGD) instead of crashing or silently
  changing them;
- :func:`step_scheduler`: one scheduler step; a ``CosineAnnealingWarmRestarts`` stepped per batch gets the
  fractional epoch ``epoch + batch_idx / batches_per_epoch`` (the course's ``_mini_batch_schedulers``);
- :func:`simulate_schedule` / :func:`simulate_module_schedule`: step a configured optimizer and scheduler
  exactly as Lightning would during ``fit`` (interval, frequency, gradient accumulation, validation order),
  without training, and return the learning rate of every training batch (``lit-cv plot-schedule`` draws it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, CyclicLR, ReduceLROnPlateau

SUPPORTED_INTERVALS = ("epoch", "step")


# ---------------------------------------------------------------------------------------------- step decay
def step_decay(epoch: int, drop: float = 0.8, epochs_drop: int = 3) -> float:
    """The course's step decay factor ``drop ** (epoch // epochs_drop)``, by which ``LambdaLR`` scales the lr.

    YAML (the course's defaults)::

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
    """True when a param group has a non-zero ``momentum`` (SGD/RMSprop) for CyclicLR to cycle.

    Adam-like optimizers (``betas``) and plain SGD count as momentum-free: torch's CyclicLR would otherwise
    cycle Adam's beta1 or switch momentum *on* (0.8-0.9) for an SGD configured without it.
    """
    return any(float(group.get("momentum", 0.0) or 0.0) > 0.0 for group in optimizer.param_groups)


def build_optimizer_and_scheduler(
    optimizer_factory: Callable[..., Optimizer],
    scheduler_factory: Callable[..., Any] | None,
    params: Sequence[Any],
) -> tuple[Optimizer, Any]:
    """Build the optimizer on ``params`` and the scheduler on it (``None`` without a scheduler factory).

    A CyclicLR with ``cycle_momentum`` on an optimizer without momentum (see :func:`has_momentum`) is rebuilt,
    on a fresh optimizer, with ``cycle_momentum=False``, as the course does for Adam.

    Raises:
        ValueError: if the scheduler factory does not accept ``cycle_momentum`` (a custom callable); the
            message says to set ``cycle_momentum: false``.
    """
    params = list(params)
    optimizer = optimizer_factory(params)
    if scheduler_factory is None:
        return optimizer, None
    momentum = has_momentum(optimizer)
    try:
        scheduler = scheduler_factory(optimizer)
    except ValueError as err:  # torch: "optimizer must support momentum or beta1 with `cycle_momentum` ..."
        if "cycle_momentum" not in str(err):
            raise
        scheduler = None
    if scheduler is not None and not (
        isinstance(scheduler, CyclicLR) and scheduler.cycle_momentum and not momentum
    ):
        return optimizer, scheduler
    optimizer = optimizer_factory(params)  # CyclicLR already wrote momentum/betas into the first one
    try:
        scheduler = scheduler_factory(optimizer, cycle_momentum=False)
    except TypeError as err:
        raise ValueError(
            f"CyclicLR would cycle the momentum of {type(optimizer).__name__}, which has none, and its "
            f"factory does not take `cycle_momentum` ({err}). Set `cycle_momentum: false` in the "
            "scheduler's init_args."
        ) from err
    rank_zero_info(
        f"CyclicLR: {type(optimizer).__name__} has no momentum to cycle; momentum cycling switched off "
        "(cycle_momentum=False)."
    )
    return optimizer, scheduler


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
    """One scheduler step, as :meth:`lit_cv.Classifier.lr_scheduler_step` does it.

    ``CosineAnnealingWarmRestarts`` stepped every batch (``interval="step"``) gets the course's fractional
    epoch ``epoch + batch_idx / batches_per_epoch`` (``batch_idx``: the batch just trained, 0-based within
    ``epoch``), so its ``T_0`` counts epochs and the curve is smooth within them. Stepped per epoch it gets a
    plain ``step()``: also ``T_0`` in epochs, constant within each epoch. ReduceLROnPlateau gets ``metric``;
    the rest ``step()``.

    Note: the course's ``StepByStep.train`` increments ``total_epochs`` before the loop, so its first epoch
    passes ``1 + i / n``; lit-cv passes the 0-based epoch (as the torch docstring does) so epoch 0 starts at
    ``eta_max``.

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


def _config(scheduler: Any, interval: str, frequency: int, monitor: str | None) -> LRSchedulerConfig:
    if interval not in SUPPORTED_INTERVALS:
        raise ValueError(f"interval must be one of {SUPPORTED_INTERVALS}, got {interval!r}.")
    if frequency < 1:
        raise ValueError(f"frequency must be >= 1, got {frequency}.")
    plateau = isinstance(scheduler, ReduceLROnPlateau)
    return LRSchedulerConfig(
        scheduler,
        interval=interval,
        frequency=frequency,
        reduce_on_plateau=plateau,
        monitor=monitor if plateau else None,
    )


def simulate_schedule(
    optimizer: Optimizer,
    scheduler: Any = None,
    *,
    max_epochs: int,
    steps_per_epoch: int,
    interval: str = "epoch",
    frequency: int = 1,
    accumulate_grad_batches: int = 1,
    metrics: Sequence[float] | None = None,
    param_group: int = 0,
) -> list[float]:
    """The learning rate of every training batch of a ``fit`` of ``max_epochs`` x ``steps_per_epoch`` batches.

    Steps ``scheduler`` (no training, no gradients) exactly where Lightning's loops would: a ``step``
    scheduler after every ``frequency``-th batch of an epoch once the accumulated gradients are applied, an
    ``epoch`` one after the last batch of every ``frequency``-th epoch, ReduceLROnPlateau after validation
    with the epoch's value from ``metrics``. Entry ``i`` is the lr used by training batch ``i`` (what
    LearningRateMonitor logs with ``logging_interval: step``). ``optimizer`` and ``scheduler`` are advanced in
    place: pass fresh ones.

    Args:
        optimizer: the optimizer the scheduler drives.
        scheduler: a torch scheduler, or ``None`` for a constant lr.
        max_epochs: epochs to simulate.
        steps_per_epoch: training batches per epoch (after ``limit_train_batches``).
        interval: ``epoch`` or ``step``, as in the Classifier's ``scheduler_interval``.
        frequency: step every this many intervals.
        accumulate_grad_batches: the Trainer's gradient accumulation.
        metrics: the monitored value of each epoch, for ReduceLROnPlateau; default: a metric that never
            improves (the earliest possible reductions).
        param_group: which param group's lr to return.

    Raises:
        ValueError: for a bad interval, frequency or size, too few ``metrics``, or a plateau scheduler stepped
            per batch before the first validation (Lightning fails there too).
    """
    return simulate_configs(
        optimizer,
        [_config(scheduler, interval, frequency, "val")] if scheduler is not None else [],
        max_epochs=max_epochs,
        steps_per_epoch=steps_per_epoch,
        accumulate_grad_batches=accumulate_grad_batches,
        metrics=metrics,
        param_group=param_group,
    )


def module_optimizer_and_schedulers(module: Any) -> tuple[Optimizer, list[LRSchedulerConfig]]:
    """Call ``module.configure_optimizers()`` (any form Lightning accepts) and parse it with Lightning's own
    parser: the optimizer and its scheduler configs (interval, frequency, monitor), without a Trainer.

    Raises:
        ValueError: if the module configures no optimizer or more than one.
    """
    from lightning.pytorch.core.optimizer import _configure_optimizers, _configure_schedulers_automatic_opt

    optimizers, schedulers, monitor = _configure_optimizers(module.configure_optimizers())
    if len(optimizers) != 1:
        raise ValueError(
            "Simulating a schedule needs exactly one optimizer; "
            f"{type(module).__name__}.configure_optimizers returned {len(optimizers)}."
        )
    return optimizers[0], _configure_schedulers_automatic_opt(schedulers, monitor)


def simulate_module_schedule(
    module: Any,
    *,
    max_epochs: int,
    steps_per_epoch: int,
    accumulate_grad_batches: int = 1,
    metrics: Sequence[float] | None = None,
    param_group: int = 0,
) -> list[float]:
    """:func:`simulate_schedule` for a LightningModule: every scheduler its ``configure_optimizers`` attaches,
    with the interval and frequency it asks for (see :func:`module_optimizer_and_schedulers`)."""
    optimizer, configs = module_optimizer_and_schedulers(module)
    return simulate_configs(
        optimizer,
        configs,
        max_epochs=max_epochs,
        steps_per_epoch=steps_per_epoch,
        accumulate_grad_batches=accumulate_grad_batches,
        metrics=metrics,
        param_group=param_group,
    )


def simulate_configs(
    optimizer: Optimizer,
    configs: Iterable[LRSchedulerConfig],
    *,
    max_epochs: int,
    steps_per_epoch: int,
    accumulate_grad_batches: int,
    metrics: Sequence[float] | None,
    param_group: int,
) -> list[float]:
    """:func:`simulate_schedule` for Lightning ``LRSchedulerConfig``s sharing one optimizer.

    Mirrors ``_TrainingEpochLoop.advance``/``on_advance_end`` and ``_FitLoop.on_advance_end`` (Lightning 2.x).
    """
    configs = list(configs)
    if max_epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"max_epochs and steps_per_epoch must be >= 1, got {max_epochs} and {steps_per_epoch}."
        )
    if accumulate_grad_batches < 1:
        raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}.")
    if not 0 <= param_group < len(optimizer.param_groups):
        raise ValueError(
            f"param_group {param_group} out of range: the optimizer has {len(optimizer.param_groups)}."
        )
    if metrics is not None and len(metrics) < max_epochs:
        raise ValueError(
            f"metrics has {len(metrics)} values but max_epochs is {max_epochs}: give one per epoch."
        )

    lrs: list[float] = []
    with warnings.catch_warnings():  # no optimizer.step() happens in a dry run: that is the point
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        _run(
            optimizer,
            configs,
            lrs,
            max_epochs,
            steps_per_epoch,
            accumulate_grad_batches,
            metrics,
            param_group,
        )
    return lrs


def _run(
    optimizer: Optimizer,
    configs: list[LRSchedulerConfig],
    lrs: list[float],
    max_epochs: int,
    steps_per_epoch: int,
    accumulate_grad_batches: int,
    metrics: Sequence[float] | None,
    param_group: int,
) -> None:
    """The loop of :func:`simulate_configs`; appends to ``lrs``."""
    last_metric: float | None = None

    def step(config: LRSchedulerConfig, epoch: int, batch_idx: int, metric: Any) -> None:
        step_scheduler(
            config.scheduler,
            metric,
            interval=config.interval,
            epoch=epoch,
            batch_idx=batch_idx,
            batches_per_epoch=steps_per_epoch,
        )

    for epoch in range(max_epochs):
        epoch_metric = 1.0 if metrics is None else float(metrics[epoch])
        for batch_idx in range(steps_per_epoch):
            lrs.append(float(optimizer.param_groups[param_group]["lr"]))
            last_batch = batch_idx + 1 == steps_per_epoch
            optimizer_stepped = (batch_idx + 1) % accumulate_grad_batches == 0 or last_batch
            for config in configs:  # non-plateau, every step
                if (
                    optimizer_stepped
                    and not config.reduce_on_plateau
                    and config.interval == "step"
                    and (batch_idx + 1) % config.frequency == 0
                ):
                    step(config, epoch, batch_idx, None)
            for config in configs:  # non-plateau, end of epoch (before validation)
                if (
                    last_batch
                    and not config.reduce_on_plateau
                    and config.interval == "epoch"
                    and (epoch + 1) % config.frequency == 0
                ):
                    step(config, epoch, batch_idx, None)
            if last_batch:  # validation runs here
                last_metric = epoch_metric
            for config in configs:  # plateau, every step, after validation
                if (
                    optimizer_stepped
                    and config.reduce_on_plateau
                    and config.interval == "step"
                    and (batch_idx + 1) % config.frequency == 0
                ):
                    if last_metric is None:
                        raise ValueError(
                            f"ReduceLROnPlateau with interval 'step' is stepped at batch {batch_idx} of "
                            f"epoch 0, before `{config.monitor}` is first computed: Lightning fails there. "
                            "Step it per epoch (`model.scheduler_interval: epoch`)."
                        )
                    step(config, epoch, batch_idx, torch.tensor(last_metric))
        for config in configs:  # plateau, end of epoch
            if (
                config.reduce_on_plateau
                and config.interval == "epoch"
                and (epoch + 1) % config.frequency == 0
            ):
                step(config, epoch, steps_per_epoch - 1, torch.tensor(epoch_metric))
