"""LRRangeTest: Leslie Smith's LR range test at the start of fit, its plot and JSON, and optionally its suggestion
applied to the optimizer, a CyclicLR's bounds or a OneCycleLR's ``max_lr`` before training proceeds."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import _TunerExitException
from torch.optim.lr_scheduler import CyclicLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from callbacks.run_dir import run_dir
from lit_cv.lr_range_test import (
    SUPPORTED_METHODS,
    SUPPORTED_STEP_MODES,
    LRRangeTestResult,
    run_lr_range_test,
    validate_params,
)


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
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def apply_suggestion(trainer: Trainer, pl_module: LightningModule, lr: float, bound_ratio: float = 4.0) -> str:
    """Put ``lr`` into the live optimizer/scheduler and into the module's factories; returns what was done.

    - CyclicLR: ``max_lr = lr``, ``base_lr = lr / bound_ratio``;
    - OneCycleLR: ``max_lr = lr`` (its ``div_factor``/``final_div_factor`` ratios kept);
    - otherwise: the optimizer's LR (and the scheduler's base LRs, so the schedule starts from it).

    The factories (``optimizer_factory`` / ``lr_scheduler_factory`` of :class:`lit_cv.Classifier`) are wrapped with
    the new values too, so an optimizer rebuilt later by ``configure_optimizers`` keeps the suggestion.
    """
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


class LRRangeTest(Callback):
    """Runs the LR range test when fit starts (:func:`lit_cv.lr_range_test.run_lr_range_test`), leaves the model,
    optimizer, schedulers, RNG and dataloader exactly as they were, and reports the curve: a figure (loss vs LR, log
    x-axis, suggestion marked) to TensorBoard and ``<filename>.png``, the LRs, losses and suggestions to
    ``<filename>.json`` in ``trainer.log_dir``, the suggested LR as the scalar ``lr_range_test/suggested_lr``.
    With ``apply=True`` the suggestion is then used for training (see :func:`apply_suggestion`).

    The test runs once: its result is in the callback's ``state_dict``, so a run resumed from a checkpoint keeps it
    (and the checkpointed optimizer keeps the applied LR) instead of testing again. Under multi-process DDP the test
    refuses with a message (run ``lit-cv lr-find`` on one device instead). See the module docstring of
    :mod:`lit_cv.lr_range_test` for what this adds over Lightning's ``LearningRateFinder`` and torch-lr-finder.

    Args:
        start_lr: first LR tested.
        end_lr: last LR tested (reached unless the loss diverges first).
        num_iter: number of LR increases; the test trains ``num_iter + 1`` batches at most.
        step_mode: ``exp`` (the course's default) or ``linear`` growth of the LR.
        smoothing: weight of the newest loss in the exponential average (the course's ``alpha``; 1 = raw loss).
        diverge_th: stop when the smoothed loss exceeds ``diverge_th`` x the best so far (``None``: never).
        val_batches: 0 records the training batch loss; N > 0 records the mean loss over the first N validation
            batches after each step (slower, less noisy).
        method: the suggestion used and applied: ``steepest`` (most negative slope against log-LR), ``valley``
            (fastai) or ``minimum`` (LR at the lowest loss / 10). All three are saved.
        skip_begin: points ignored at the start of the curve when suggesting.
        skip_end: points ignored at the end (0 keeps them all).
        apply: use the suggestion for training: the optimizer's LR, or a CyclicLR's ``max_lr`` (with ``base_lr =
            max_lr / bound_ratio``), or a OneCycleLR's ``max_lr``.
        bound_ratio: ``max_lr / base_lr`` for CyclicLR (Smith: 3 to 4; the course: 4 to 10).
        filename: stem of the PNG and JSON files.
        exit_after: end ``fit`` right after the test (what ``lit-cv lr-find`` does).

    Raises:
        ValueError: for an argument out of range, or (at fit start) multi-process DDP, manual optimization or more
            than one optimizer.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: callbacks.LRRangeTest
              init_args: {start_lr: 1.0e-5, end_lr: 1.0, num_iter: 100, apply: true}

    Example (Python)::

        finder = LRRangeTest(end_lr=0.1, num_iter=50)
        Trainer(callbacks=[finder]).fit(model, datamodule=dm)
        finder.result.suggestion, finder.result.suggestions["valley"]
    """

    SUPPORTED_STEP_MODES = SUPPORTED_STEP_MODES
    SUPPORTED_METHODS = SUPPORTED_METHODS

    def __init__(
        self,
        start_lr: float = 1e-6,
        end_lr: float = 1.0,
        num_iter: int = 100,
        step_mode: str = "exp",
        smoothing: float = 0.05,
        diverge_th: float | None = 5.0,
        val_batches: int = 0,
        method: str = "steepest",
        skip_begin: int = 10,
        skip_end: int = 1,
        apply: bool = False,
        bound_ratio: float = 4.0,
        filename: str = "lr_range_test",
        exit_after: bool = False,
    ) -> None:
        self.kwargs = {
            "start_lr": start_lr, "end_lr": end_lr, "num_iter": num_iter, "step_mode": step_mode,
            "smoothing": smoothing, "diverge_th": diverge_th, "val_batches": val_batches, "method": method,
            "skip_begin": skip_begin, "skip_end": skip_end,
        }
        validate_params(**self.kwargs)
        if bound_ratio <= 1:
            raise ValueError(f"bound_ratio (max_lr / base_lr of CyclicLR) must be > 1, got {bound_ratio}.")
        if not filename or "/" in filename:
            raise ValueError(f"filename must be a plain file stem such as 'lr_range_test', got {filename!r}.")
        self.apply = apply
        self.bound_ratio = bound_ratio
        self.filename = filename
        self.exit_after = exit_after
        self.result: LRRangeTestResult | None = None
        self.applied: str = ""
        self.paths: dict[str, Path] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            start_lr=self.kwargs["start_lr"], end_lr=self.kwargs["end_lr"], num_iter=self.kwargs["num_iter"],
            step_mode=self.kwargs["step_mode"], method=self.kwargs["method"],
        )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            rank_zero_warn("LRRangeTest is skipped because `fast_dev_run` is enabled.")
            return
        if self.result is None:
            self.result = run_lr_range_test(trainer, pl_module, **self.kwargs)
            self._report(trainer)
        if self.apply:
            self._apply(trainer, pl_module)
        if self.exit_after:
            raise _TunerExitException()

    def _apply(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.result is None or self.result.suggestion is None:
            rank_zero_warn("LRRangeTest: no suggestion to apply; training keeps the configured LR.")
            return
        self.applied = apply_suggestion(trainer, pl_module, self.result.suggestion, self.bound_ratio)
        rank_zero_info(f"LRRangeTest: {self.applied}.")

    @rank_zero_only
    def _report(self, trainer: Trainer) -> None:
        import matplotlib.pyplot as plt

        result = self.result
        if result is None:
            return
        out_dir = run_dir(trainer)
        self.paths = {
            "json": result.save_json(out_dir / f"{self.filename}.json"),
            "png": result.save_png(out_dir / f"{self.filename}.png"),
        }
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                fig = result.plot()
                experiment.add_figure("lr_range_test/curve", fig, global_step=trainer.global_step)
                plt.close(fig)
            if result.suggestion is not None:
                logger.log_metrics({"lr_range_test/suggested_lr": result.suggestion}, step=trainer.global_step)
        if result.suggestion is None:
            rank_zero_warn(f"LRRangeTest: {result.message}")
        else:
            others = ", ".join(f"{m} {v:.3g}" for m, v in result.suggestions.items() if v is not None)
            rank_zero_info(f"LRRangeTest: suggested LR {result.suggestion:.4g} ({result.method}; {others}); "
                           f"curve in {self.paths['png']}")

    def state_dict(self) -> dict[str, Any]:
        return {"result": None if self.result is None else self.result.to_dict(), "applied": self.applied}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        result = state_dict.get("result")
        self.result = None if result is None else LRRangeTestResult.from_dict(result)
        self.applied = state_dict.get("applied", "")
