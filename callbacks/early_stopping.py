"""Stop training when a monitored metric stops improving or the loss turns NaN; then restore the best weights."""

from __future__ import annotations

import math
import multiprocessing
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden

from callbacks.model_checkpoint import load_checkpoint_safely

RESTORED_EPOCH_KEY = "restored_epoch"  # in trainer.callback_metrics after a restore (metrics.json, the table)


def validate_restored(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
    """Validate ``pl_module``'s current weights once more at the end of ``fit`` and return the metrics it logged.

    Runs ``trainer.validate`` inside ``fit``'s ``on_fit_end`` with only the progress bar as callback and no logger
    (no checkpoint, report, figure or TensorBoard point comes from it), then puts back the callbacks, loggers and the
    trainer state of ``fit``, and merges the new values into ``trainer.callback_metrics`` (keys not re-logged, e.g.
    ``train/*``, keep their last values).
    """
    # Workaround, see docs/lightning-workarounds.md (Lightning has no evaluation inside fit: a nested validate).
    saved = (trainer.callbacks, trainer.loggers, trainer.state.fn, trainer.state.status, trainer.state.stage)
    before = dict(trainer.callback_metrics)
    source = {"datamodule": trainer.datamodule} if trainer.datamodule is not None else {}
    if not source and trainer.val_dataloaders is not None:
        source = {"dataloaders": trainer.val_dataloaders}
    trainer.callbacks = [c for c in trainer.callbacks if isinstance(c, ProgressBar)]
    trainer.loggers = []
    try:
        with warnings.catch_warnings():
            # the fit's own validations shard the data the same way, so the numbers compare like for like
            warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders")
            trainer.validate(pl_module, verbose=False, **source)
        validated = dict(trainer.callback_metrics)
    finally:
        trainer.callbacks, trainer.loggers = saved[0], saved[1]
        trainer.state.fn, trainer.state.status, trainer.state.stage = saved[2:]
    trainer.callback_metrics.update({**before, **validated})
    return validated


class EarlyStopping(_LightningEarlyStopping):
    """Lightning's ``EarlyStopping`` (same arguments and behaviour) that also restores the best weights at the
    end of ``fit`` and stops on a non-finite training loss. A drop-in replacement.

    What it adds:

    - ``restore_best_weights``: at the end of ``fit`` the module gets the weights of the epoch with the best
      ``monitor`` value, so ``trainer.test`` / ``predict`` after ``fit`` evaluate the best model, not the
      last. They come from the best checkpoint of a ``ModelCheckpoint`` watching the same ``monitor`` and
      ``mode`` when there is one (the ``lit-cv`` CLI's default checkpoint watches ``val/loss``, ``min``), read
      with ``weights_only=True`` (a checkpoint holding pickled objects is refused with a warning and the last
      weights are kept), else from an in-memory copy taken whenever the value improves. "Best" is the strictly
      best value seen, as ModelCheckpoint defines it (``min_delta`` only affects patience).
    - After a restore the restored weights are validated once more (:func:`validate_restored`): the ``val/*``
      values in ``trainer.callback_metrics`` (so the final table and ``metrics.json`` of ``MetricsReport``, which
      must come after this callback in ``trainer.callbacks``, as the ``lit-cv`` CLI orders them) are the restored
      model's, and ``restored_epoch`` says which epoch they come from. ``train/*`` values stay the last epoch's.
    - With ``check_finite`` (default on) a NaN/inf *training loss* stops training after that batch, with a
      warning naming the global step, epoch and batch; Lightning itself only checks ``monitor`` once per
      epoch.

    Args:
        monitor: metric to watch, e.g. ``val/loss`` or ``val/acc``.
        min_delta: smallest change that counts as an improvement for ``patience`` (>= 0).
        patience: validation checks without improvement before stopping (>= 0).
        verbose: log every improvement and the stop reason.
        mode: ``min`` or ``max``.
        strict: fail if ``monitor`` is not logged.
        check_finite: stop when ``monitor`` or the training loss is NaN/inf.
        stopping_threshold: stop as soon as ``monitor`` is better than this.
        divergence_threshold: stop as soon as ``monitor`` is worse than this.
        check_on_train_epoch_end: check at train epoch end (default: when validation runs once per epoch).
        log_rank_zero_only: log the status on rank 0 only.
        restore_best_weights: load the best weights at the end of ``fit``.

    Raises:
        ValueError: for a negative ``patience`` or ``min_delta``, or an empty ``monitor``.
        MisconfigurationException: for a ``mode`` other than ``min``/``max`` (from Lightning).

    Example (YAML, ``trainer.callbacks``)::

        trainer:
          callbacks:
            - class_path: callbacks.EarlyStopping
              init_args: {monitor: val/loss, mode: min, patience: 5, restore_best_weights: true}

    Python::

        early = EarlyStopping("val/acc", mode="max", patience=3)
        trainer = Trainer(callbacks=[early]); trainer.fit(model, dm)
        trainer.test(model, dm)  # the best epoch's weights (early.best_epoch)
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        restore_best_weights: bool = True,
    ) -> None:
        if not monitor:
            raise ValueError("EarlyStopping needs a `monitor` metric, e.g. `val/loss` or `val/acc`.")
        if patience < 0:
            raise ValueError(f"EarlyStopping patience must be >= 0, got {patience}.")
        if min_delta < 0:
            raise ValueError(
                "EarlyStopping min_delta must be >= 0 (an absolute change; `mode` gives the direction), "
                f"got {min_delta}."
            )
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.restore_best_weights = restore_best_weights
        self.best_weights_score: float | None = None  # strictly best value seen (ModelCheckpoint's notion)
        self.best_epoch: int | None = None
        self.restored_from: str | None = None  # "memory", a checkpoint path, or None
        self.restored_metrics: dict[str, float] = {}  # validation of the restored weights
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._batch_step = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(best_weights_score=self.best_weights_score, best_epoch=self.best_epoch)
        if self._best_weights is not None:  # no matching checkpoint holds them: a resume needs this copy
            state["best_weights"] = self._best_weights
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_weights_score = state_dict.get("best_weights_score")
        self.best_epoch = state_dict.get("best_epoch")
        self._best_weights = state_dict.get("best_weights")

    # ------------------------------------------------------------------ hooks
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_step = trainer.global_step  # the step this batch trains as (what training_step sees)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.check_finite or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        self._stop_on_non_finite_loss(trainer, loss, batch_idx)

    # Overrides a private Lightning method: the one place both of Lightning's check hooks (validation end, train
    # epoch end) go through.
    def _run_early_stopping_check(self, trainer: Trainer) -> None:
        if self.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC and trainer.should_stop:
            return  # stopped on a NaN loss: keep that reason, do not count this epoch
        super()._run_early_stopping_check(trainer)
        if self.restore_best_weights:
            self._track_best(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.restore_best_weights and not trainer.fast_dev_run:
            self._restore(trainer, pl_module)

    # ------------------------------------------------------------------ private
    def _stop_on_non_finite_loss(self, trainer: Trainer, loss: torch.Tensor, batch_idx: int) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        should_stop = trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if not should_stop:
            return
        step = self._batch_step
        if finite:
            value = "non-finite on another rank"
        else:
            value = loss.detach().float().cpu().tolist() if loss.numel() == 1 else "non-finite"
        message = (
            f"Training loss is {value} at global step {step} (epoch {trainer.current_epoch}, "
            f"batch {batch_idx}): stopping training. Lower the learning rate, clip gradients "
            "(`trainer.gradient_clip_val`) or check the inputs for NaN."
        )
        trainer.should_stop = True
        self.stopped_epoch = trainer.current_epoch
        self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
        self.stopping_reason_message = message
        rank_zero_warn(message, category=RuntimeWarning)

    def _matching_checkpoint(self, trainer: Trainer) -> ModelCheckpoint | None:
        """A ModelCheckpoint that saves on every improvement of our ``monitor`` in our ``mode``."""
        for callback in trainer.checkpoint_callbacks:
            if (
                isinstance(callback, ModelCheckpoint)
                and callback.monitor == self.monitor
                and callback.mode == self.mode
                and callback.save_top_k != 0
                and (callback.every_n_epochs or 0) <= 1
                and not getattr(callback, "_every_n_train_steps", 0)
                and getattr(callback, "_train_time_interval", None) is None
            ):
                return callback
        return None

    def _track_best(self, trainer: Trainer) -> None:
        current = trainer.callback_metrics.get(self.monitor)
        if current is None or trainer.fast_dev_run:
            return
        value = float(current.squeeze())
        if not math.isfinite(value):
            return
        best = self.best_weights_score
        if best is not None and not self.monitor_op(torch.tensor(value), torch.tensor(best)):
            return
        self.best_weights_score = value
        self.best_epoch = trainer.current_epoch
        if self._matching_checkpoint(trainer) is not None:
            self._best_weights = None  # the checkpoint file will hold them
            return
        self._best_weights = {
            k: v.detach().to("cpu", copy=True) for k, v in trainer.lightning_module.state_dict().items()
        }

    def _restore(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = self._matching_checkpoint(trainer)
        path = checkpoint.best_model_path if checkpoint is not None else ""
        trainer.strategy.barrier("early_stopping_restore")
        if self.best_epoch is None:  # checked on every rank: they all return or all validate again
            rank_zero_warn(
                f"EarlyStopping: `{self.monitor}` was never finite (NaN or inf at every validation; e.g. AUROC of a "
                "validation set holding one class), so there are no best weights: keeping the last ones."
            )
            return
        saved = getattr(checkpoint, "best_model_score", None)
        if path and saved is not None and not math.isclose(float(saved), self.best_weights_score, rel_tol=1e-6):
            # a run resumed into a new version directory: its ModelCheckpoint's best is this run's, not the best
            rank_zero_warn(
                f"EarlyStopping: the best checkpoint {path} holds {self.monitor}={float(saved):.6g}, not the best "
                f"{self.best_weights_score:.6g} of epoch {self.best_epoch} (saved before a resume into another run "
                "folder); keeping the last weights. Resume with `--ckpt_path last` to continue in the same folder."
            )
            return
        if path and Path(path).is_file():
            try:  # restored from a resumed run folder, so not necessarily ours: never unpickle objects
                if isinstance(trainer.strategy.checkpoint_io, TorchCheckpointIO):  # one local file
                    checkpoint_dict = load_checkpoint_safely(path)
                else:
                    checkpoint_dict = trainer.strategy.load_checkpoint(path, weights_only=True)
            except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as err:
                rank_zero_warn(f"EarlyStopping: not restoring the best weights, keeping the last ones: {err}")
                return
            trainer.strategy.load_model_state_dict(checkpoint_dict, strict=True)
            self.restored_from = path
        elif self._best_weights is not None:
            pl_module.load_state_dict(self._best_weights, strict=True)
            self.restored_from = "memory"
        else:
            rank_zero_warn(
                f"EarlyStopping: the best checkpoint {path or '(none saved)'} of `{self.monitor}` is "
                "missing; keeping the last weights."
            )
            return
        score = f"{self.monitor}={self.best_weights_score:.6g}" if self.best_weights_score is not None else ""
        rank_zero_info(
            f"EarlyStopping: restored the best weights (epoch {self.best_epoch}, {score}) "
            f"from {self.restored_from}."
        )
        self._report_restored(trainer, pl_module)

    def _report_restored(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Validate the restored weights so the final metrics describe them, and say which epoch they are."""
        if not is_overridden("validation_step", pl_module) or not trainer.limit_val_batches:
            return
        if trainer.strategy.launcher is not None and multiprocessing.parent_process() is not None:
            # a process of `ddp_spawn` / `ddp_fork` / `ddp_notebook`: a nested validate would start processes again
            rank_zero_warn(
                "EarlyStopping: the final metrics are the last epoch's; the restored weights are validated again "
                f"only under `ddp` or one device, not `{trainer.strategy.strategy_name}`."
            )
            return
        validated = validate_restored(trainer, pl_module)
        epoch = self.best_epoch if self.best_epoch is not None else -1
        trainer.callback_metrics[RESTORED_EPOCH_KEY] = torch.tensor(epoch)
        self.restored_metrics = {
            k: float(v) for k, v in validated.items() if isinstance(v, torch.Tensor) and v.numel() == 1
        }
        if self.monitor in self.restored_metrics:
            rank_zero_info(
                f"EarlyStopping: validation of the restored weights (epoch {self.best_epoch}): "
                f"{self.monitor}={self.restored_metrics[self.monitor]:.6g}."
            )
