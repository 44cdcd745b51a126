"""LRRangeTest: the LR range test when fit starts, its curve reported, its suggestion optionally applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import _TunerExitException

from callbacks.figures import figure
from callbacks.lr_range_test.apply import apply_suggestion
from callbacks.lr_range_test.curve import LRRangeTestResult
from callbacks.lr_range_test.params import SUPPORTED_METHODS, SUPPORTED_STEP_MODES, LRRangeTestParams
from callbacks.lr_range_test.report import FIGSIZE, plot_curve, write_report
from callbacks.lr_range_test.run import run_lr_range_test
from callbacks.run_dir import run_dir


class LRRangeTest(Callback):
    """Runs the LR range test when fit starts (:func:`run_lr_range_test`), leaves the model, optimizer, schedulers,
    RNG and dataloader exactly as they were, and reports the curve: a figure (loss vs LR, log x-axis, suggestion
    marked) to TensorBoard and ``<filename>.png``, the LRs, losses and suggestions to ``<filename>.json`` in the
    run directory, the suggested LR as the scalar ``lr_range_test/suggested_lr``. With ``apply=True`` the
    suggestion is then used for training (see :func:`apply_suggestion`).

    The test runs once: its result is in the callback's ``state_dict``, so a run resumed from a checkpoint keeps it
    (and the checkpointed optimizer keeps the applied LR) instead of testing again. Under multi-process DDP the test
    refuses with a message (run ``lit-cv lr-find`` on one device instead).

    Args:
        apply: use the suggestion for training: the optimizer's LR, or a CyclicLR's ``max_lr`` (with ``base_lr =
            max_lr / bound_ratio``), or a OneCycleLR's ``max_lr``.
        bound_ratio: ``max_lr / base_lr`` for CyclicLR (Smith: 3 to 4; the course: 4 to 10).
        filename: stem of the PNG and JSON files.
        exit_after: end ``fit`` right after the test (what ``lit-cv lr-find`` does).
        **params: the fields of :class:`LRRangeTestParams` (``start_lr``, ``end_lr``, ``num_iter``, ``step_mode``,
            ``smoothing``, ``diverge_th``, ``val_batches``, ``method``, ``skip_begin``, ``skip_end``).

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
        finder.result.suggestion, finder.result.suggestions["steepest"]  # valley by default, all three saved
    """

    SUPPORTED_STEP_MODES = SUPPORTED_STEP_MODES
    SUPPORTED_METHODS = SUPPORTED_METHODS

    def __init__(
        self,
        apply: bool = False,
        bound_ratio: float = 4.0,
        filename: str = "lr_range_test",
        exit_after: bool = False,
        **params: Any,
    ) -> None:
        self.params = LRRangeTestParams(**params)
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
        p = self.params
        return self._generate_state_key(
            start_lr=p.start_lr, end_lr=p.end_lr, num_iter=p.num_iter, step_mode=p.step_mode, method=p.method
        )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            rank_zero_warn("LRRangeTest is skipped because `fast_dev_run` is enabled.")
            return
        if self.result is None:
            self.result = run_lr_range_test(trainer, pl_module, self.params)
            self._report(trainer)
        if self.apply:
            self._apply(trainer, pl_module)
        if self.exit_after:
            raise _TunerExitException()  # ends fit cleanly, as Lightning's own LearningRateFinder does

    def _apply(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.result is None or self.result.suggestion is None:
            rank_zero_warn("LRRangeTest: no suggestion to apply; training keeps the configured LR.")
            return
        self.applied = apply_suggestion(trainer, pl_module, self.result.suggestion, self.bound_ratio)
        rank_zero_info(f"LRRangeTest: {self.applied}.")

    @rank_zero_only
    def _report(self, trainer: Trainer) -> None:
        result = self.result
        if result is None:
            return
        self.paths = write_report(result, run_dir(trainer), self.filename)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                with figure(figsize=FIGSIZE) as (fig, ax):
                    plot_curve(result, ax)
                    experiment.add_figure("lr_range_test/curve", fig, global_step=trainer.global_step)
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
