"""Lightning's RichProgressBar, redrawn a few times a second instead of after every batch.

Lightning's bar re-reads every logged metric and renders the whole display at the end of each batch; for a small
net on cached tensors that costs more than the training step itself (``benchmarks/overhead.py``). This one does that
work at most ``max_redraws_per_second`` times a second, and always at an epoch's last batch, so the bar looks the
same to a reader and ends on the same numbers. The logger's version shows as ``v_num: 3``, not ``3.000``.
"""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar


class RichProgressBar(LightningRichProgressBar):
    """``lightning.pytorch.callbacks.RichProgressBar`` with per-batch redraws throttled.

    Args:
        max_redraws_per_second: the most times a second a batch end redraws the bar (> 0); the last batch of an
            epoch and the sanity check always draw.
        *args, **kwargs: Lightning's ``RichProgressBar`` arguments (``refresh_rate``, ``leave``, ``theme``, ...).

    Raises:
        ValueError: for ``max_redraws_per_second`` <= 0.
    """

    def __init__(self, *args: Any, max_redraws_per_second: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if max_redraws_per_second <= 0:
            raise ValueError(f"max_redraws_per_second must be > 0, got {max_redraws_per_second}.")
        self.min_interval = 1.0 / max_redraws_per_second
        self._last_draw = float("-inf")

    def draw_due(self, batch_idx: int, total: float) -> bool:
        """Whether the batch ``batch_idx`` (0-based) of ``total`` redraws: the last one, or the interval passed."""
        now = time.monotonic()
        if batch_idx + 1 >= total or now - self._last_draw >= self.min_interval:
            self._last_draw = now
            return True
        return False

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Lightning's items, the logger's version as text: Lightning's rich bar formats every number with
        ``.3f`` (``v_num: 1.000``)."""
        items = super().get_metrics(trainer, pl_module)
        if "v_num" in items:
            items["v_num"] = str(items["v_num"])
        return items

    def _due(self, batch_idx: int, total: str) -> bool:
        """Whether this batch end draws: never on a disabled bar (every rank but 0, where Lightning tracks no
        dataloader, so ``total``, the name of the bar's batch-count property, must not be read), else
        :meth:`draw_due`."""
        return not self.is_disabled and self.draw_due(batch_idx, getattr(self, total))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None or self._due(batch_idx, "total_train_batches"):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or self._due(batch_idx, "total_val_batches_current_dataloader"):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._due(batch_idx, "total_test_batches_current_dataloader"):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._due(batch_idx, "total_predict_batches_current_dataloader"):
            super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
