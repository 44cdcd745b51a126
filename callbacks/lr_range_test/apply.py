"""Put a suggested LR into training: the live optimizer and scheduler, and the module's optimizer/scheduler factories."""

from __future__ import annotations

import functools
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim.lr_scheduler import CyclicLR, LRScheduler, OneCycleLR, ReduceLROnPlateau


def _with_kwargs(factory: Any, **kwargs: Any) -> Any:
    """``factory`` with ``kwargs`` overriding its own (a ``functools.partial`` from LightningCLI, or a class);
    ``None`` when it cannot take keyword overrides safely (e.g. a lambda)."""
    if isinstance(factory, (functools.partial, type)):
        return functools.partial(factory, **kwargs)
    return None


def _rescale_current_lrs(optimizer: Any, scheduler: Any, old_initial: list[float]) -> None:
    """Scale each group's current LR by its new/old initial LR, so the schedule keeps its shape (at the first step
    the current LR is the initial one, or e.g. a warm-up fraction of it) and starts from the new value."""
    for group, old in zip(optimizer.param_groups, old_initial):
        group["lr"] = group["lr"] * group["initial_lr"] / old if old > 0 else group["initial_lr"]
    if scheduler is not None:
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def apply_suggestion(trainer: Trainer, pl_module: LightningModule, lr: float, bound_ratio: float = 4.0) -> str:
    """Put ``lr`` into the live optimizer/scheduler and into the module's factories; returns what was done.

    - CyclicLR: ``max_lr = lr``, ``base_lr = lr / bound_ratio``;
    - OneCycleLR: ``max_lr = lr`` (its ``div_factor``/``final_div_factor`` ratios kept);
    - otherwise: the optimizer's LR (and the scheduler's base LRs, so the schedule starts from it).

    The module's ``optimizer_factory`` / ``lr_scheduler_factory`` (when it has them) are wrapped with the new values
    too, so an optimizer rebuilt later by ``configure_optimizers`` keeps the suggestion.
    """
    # Workaround, see docs/lightning-workarounds.md (Lightning #21030, #16787).
    optimizer = trainer.optimizers[0]
    groups = optimizer.param_groups
    configs = trainer.lr_scheduler_configs
    scheduler = configs[0].scheduler if configs else None
    old_initial = [group.get("initial_lr", group["lr"]) for group in groups]
    if isinstance(scheduler, CyclicLR):
        base_lr = lr / bound_ratio
        scheduler.max_lrs = [lr] * len(groups)
        scheduler.base_lrs = [base_lr] * len(groups)
        for group in groups:
            group["initial_lr"] = base_lr
        factory_kwargs, target = {"base_lr": base_lr, "max_lr": lr}, "lr_scheduler_factory"
        done = f"CyclicLR bounds set to base_lr={base_lr:.4g}, max_lr={lr:.4g} (ratio {bound_ratio:g})"
    elif isinstance(scheduler, OneCycleLR):
        for group in groups:
            div_factor = group["max_lr"] / group["initial_lr"]
            final_div_factor = group["initial_lr"] / group["min_lr"]
            group["max_lr"] = lr
            group["initial_lr"] = lr / div_factor
            group["min_lr"] = group["initial_lr"] / final_div_factor
        scheduler.base_lrs = [group["initial_lr"] for group in groups]
        factory_kwargs, target = {"max_lr": lr}, "lr_scheduler_factory"
        done = f"OneCycleLR max_lr set to {lr:.4g}"
    elif isinstance(scheduler, LRScheduler) and not isinstance(scheduler, ReduceLROnPlateau):
        for group in groups:
            group["initial_lr"] = lr
        scheduler.base_lrs = [lr] * len(groups)
        factory_kwargs, target = {"lr": lr}, "optimizer_factory"
        done = f"optimizer LR (the schedule's base LR) set to {lr:.4g}"
    else:  # no schedule, or ReduceLROnPlateau which only ever lowers the current LR
        for group in groups:
            group["lr"] = lr
            if "initial_lr" in group:
                group["initial_lr"] = lr
        factory_kwargs, target = {"lr": lr}, "optimizer_factory"
        done = f"optimizer LR set to {lr:.4g}"
    if isinstance(scheduler, LRScheduler) and not isinstance(scheduler, ReduceLROnPlateau):
        _rescale_current_lrs(optimizer, scheduler, old_initial)
    factory = getattr(pl_module, target, None)
    if factory is not None:
        wrapped = _with_kwargs(factory, **factory_kwargs)
        if wrapped is None:
            rank_zero_warn(f"LRRangeTest: `{target}` is not a class or partial; it keeps its own LR settings.")
        else:
            setattr(pl_module, target, wrapped)
    return done
