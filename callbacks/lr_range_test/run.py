"""The LR range test run inside a set-up ``Trainer``, leaving the model, optimizer, RNG and loops as they were."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.connectors.data_connector import _request_dataloader
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection
from torchmetrics import Metric

from callbacks.lr_range_test.curve import LRRangeTestResult, is_diverging, lr_sequence
from callbacks.lr_range_test.params import LRRangeTestParams
from callbacks.rng_state import collect_rng_states, set_rng_states


def check_supported(trainer: Trainer, pl_module: LightningModule) -> None:
    """Refuse set-ups the test cannot leave without a trace; the messages say what to do instead."""
    # Workaround, see docs/lightning-workarounds.md (Lightning #19611).
    if getattr(trainer, "world_size", 1) > 1:
        raise ValueError(
            f"The LR range test runs in a single process, but this trainer has world_size={trainer.world_size} "
            "(multi-process DDP). Run `lit-cv lr-find --config X.yaml --trainer.devices 1` and put the suggested "
            "LR into the config, then train on all devices."
        )
    if not getattr(pl_module, "automatic_optimization", True):
        raise ValueError(
            "The LR range test needs automatic optimization; this module sets automatic_optimization=False."
        )
    optimizers = getattr(trainer, "optimizers", [])
    if len(optimizers) != 1:
        raise ValueError(
            f"The LR range test needs exactly one optimizer; configure_optimizers returned {len(optimizers)}."
        )


@contextmanager
def preserved_training_state(trainer: Trainer, pl_module: LightningModule) -> Iterator[None]:
    """Save everything the test can change and restore it in ``finally``, bitwise.

    Weights and buffers, gradients, optimizer and scheduler state dicts, the precision plugin's state (AMP grad
    scaler), global RNG states (torch, CUDA, numpy, random), train/eval mode of every submodule, torchmetrics states,
    the trainer's callbacks list, the training loop's logged results and the module's current hook name.
    """
    # Workaround, see docs/lightning-workarounds.md (Lightning isolate_rng).
    rng = collect_rng_states()
    weights = {k: v.detach().clone() for k, v in pl_module.state_dict(keep_vars=True).items()}
    grads = {p: (None if p.grad is None else p.grad.detach().clone()) for p in pl_module.parameters()}
    optimizers = [(opt, copy.deepcopy(opt.state_dict())) for opt in trainer.optimizers]
    schedulers = [(cfg.scheduler, copy.deepcopy(cfg.scheduler.state_dict())) for cfg in trainer.lr_scheduler_configs]
    precision = trainer.precision_plugin
    precision_state = copy.deepcopy(precision.state_dict())
    modes = {module: module.training for module in pl_module.modules()}
    metrics = [
        (m, copy.deepcopy(m.metric_state), m._update_count, m._computed)
        for m in pl_module.modules()
        if isinstance(m, Metric)
    ]
    callbacks = trainer.callbacks
    epoch_loop = trainer.fit_loop.epoch_loop
    results = epoch_loop._results
    fx_name = pl_module._current_fx_name
    try:
        trainer.callbacks = []  # other callbacks must not see the test's steps (gradient capture, EMA, ...)
        epoch_loop._results = _ResultCollection(training=True)  # `self.log` in training_step goes nowhere
        yield
    finally:
        trainer.callbacks = callbacks
        epoch_loop._results = results
        pl_module._current_fx_name = fx_name
        with torch.no_grad():
            pl_module.load_state_dict(weights)
            for p, g in grads.items():
                p.grad = g
        for opt, state in optimizers:
            opt.load_state_dict(state)
        for scheduler, state in schedulers:
            scheduler.load_state_dict(state)
        if precision_state:
            precision.load_state_dict(precision_state)
        for module, training in modes.items():
            module.training = training
        for metric, state, count, computed in metrics:
            for name, value in state.items():
                setattr(metric, name, value)
            metric._update_count = count
            metric._computed = computed
        set_rng_states(rng)


def _loss_of(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        return output["loss"]
    return None


def _to_device(trainer: Trainer, batch: Any) -> Any:
    """What the training loop does to a batch: precision conversion, the batch hooks, the move to the device."""
    batch = trainer.precision_plugin.convert_input(batch)
    batch = trainer.lightning_module._on_before_batch_transfer(batch, dataloader_idx=0)
    return trainer.strategy.batch_to_device(batch, dataloader_idx=0)


def _training_step(trainer: Trainer, batch: Any, index: int) -> torch.Tensor | None:
    """The module's ``training_step`` through the strategy, named as the loop names it so ``self.log`` works."""
    module = trainer.lightning_module
    previous, module._current_fx_name = module._current_fx_name, "training_step"
    try:
        return _loss_of(trainer.strategy.training_step(batch, index))
    finally:
        module._current_fx_name = previous


def _endless(loader: Any) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("The training dataloader is empty: the LR range test has no batch to train on.")


def _train_step(trainer: Trainer, optimizer: torch.optim.Optimizer, batch: Any, index: int) -> float:
    """One optimisation step through the strategy and precision plugin; returns the batch loss before the step."""
    holder: dict[str, float] = {}

    def closure() -> torch.Tensor | None:
        optimizer.zero_grad(set_to_none=True)
        loss = _training_step(trainer, batch, index)
        if loss is None:
            holder["loss"] = float("nan")
            return None
        holder["loss"] = float(loss.detach())
        trainer.strategy.backward(loss, optimizer)
        return loss

    trainer.strategy.optimizer_step(optimizer, closure)
    return holder.get("loss", float("nan"))


@torch.no_grad()
def _eval_loss(trainer: Trainer, pl_module: LightningModule, batches: list[Any]) -> float:
    """Mean ``training_step`` loss over fixed validation batches, in eval mode, without gradients."""
    pl_module.eval()
    try:
        losses = [_training_step(trainer, batch, i) for i, batch in enumerate(batches)]
    finally:
        pl_module.train()
    if any(loss is None for loss in losses):
        return float("nan")
    return float(torch.stack([loss.detach().float() for loss in losses]).mean())


def _validation_batches(trainer: Trainer, count: int) -> list[Any]:
    """The first ``count`` validation batches, on the device."""
    source = trainer.fit_loop.epoch_loop.val_loop._data_source
    if not source.is_defined():
        raise ValueError("val_batches > 0 needs a validation dataloader; the datamodule has none.")
    batches: list[Any] = []
    for batch in _request_dataloader(source):
        batches.append(_to_device(trainer, batch))
        if len(batches) == count:
            break
    return batches


def run_lr_range_test(
    trainer: Trainer, pl_module: LightningModule, params: LRRangeTestParams | None = None
) -> LRRangeTestResult:
    """Run the range test inside a trainer whose strategy is set up (``on_fit_start`` or later) and return the curve.

    Trains one batch per LR of :func:`lr_sequence` (batches from a fresh training dataloader, cycled if too short),
    records the batch loss, or with ``val_batches > 0`` the mean loss over that many validation batches after each
    step, smooths it and stops once :func:`is_diverging`. Everything is restored afterwards (see
    :func:`preserved_training_state`).
    """
    p = params or LRRangeTestParams()
    check_supported(trainer, pl_module)
    optimizer = trainer.optimizers[0]
    lrs = lr_sequence(p.start_lr, p.end_lr, p.num_iter, p.step_mode)
    tested: list[float] = []
    raw: list[float] = []
    stopped_early = False
    # Workaround, see docs/lightning-workarounds.md (Lightning #15603).
    with preserved_training_state(trainer, pl_module):
        val_set = _validation_batches(trainer, p.val_batches) if p.val_batches else []
        batches = _endless(_request_dataloader(trainer.fit_loop._data_source))
        pl_module.train()
        smoothed: float | None = None
        best = math.inf
        for i, lr in enumerate(lrs):
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = _train_step(trainer, optimizer, _to_device(trainer, next(batches)), i)
            if val_set:
                loss = _eval_loss(trainer, pl_module, val_set)
            tested.append(lr)
            raw.append(loss)
            smoothed = loss if smoothed is None else p.smoothing * loss + (1 - p.smoothing) * smoothed
            if i > 0 and is_diverging(smoothed, best, p.diverge_th):
                stopped_early = i < p.num_iter
                break
            best = min(best, smoothed)
        batches.close()
    return LRRangeTestResult.from_curve(tested, raw, p, stopped_early=stopped_early)
