"""Save checkpoints of the best models and ``last.ckpt`` at every checkpointing point (each validation)."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's :class:`~lightning.pytorch.callbacks.ModelCheckpoint`, except that ``save_last=True`` refreshes
    ``last.ckpt`` at every checkpointing point (each validation, or each training epoch end without validation), so
    ``--ckpt_path last`` (and a SLURM requeue) continue from the latest epoch, not from the best one. Same arguments
    as Lightning's; the ``lit-cv`` CLI uses this class for its ``checkpoint:`` group.

    Example::

        checkpoint:          # lit-cv fit --config ...
          monitor: val/loss
          save_last: true
    """

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Workaround, see docs/lightning-workarounds.md (Lightning 2.6 `on_train_end` saves under fast_dev_run).
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def _save_last_if_missed(self, trainer: Trainer) -> None:
        # Workaround, see docs/lightning-workarounds.md (Lightning 2.6.0 `save_last` change, no upstream issue).
        # Skipped when the parent saved at this step already (then it wrote last.ckpt itself).
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
