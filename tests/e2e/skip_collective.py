"""Test-only callback for ``tests/e2e/test_ddp.py``: rank 0 runs a collective that rank 1 skips, the bug class of a
rank-dependent code path. Loaded by the ``lit-cv`` subprocesses as ``class_path: skip_collective.SkipCollective``
(the test puts this folder on ``PYTHONPATH``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SkipCollective(Callback):
    """After the first training batch rank 0 all-reduces a tensor; rank 1 skips that collective and stays away
    (sleeps), so rank 0 waits for it. Each rank first writes ``rank<N>.pid`` (its process id) into ``marker_dir``,
    and rank 0 writes ``waiting`` right before it enters the collective."""

    def __init__(self, marker_dir: str) -> None:
        self.marker_dir = Path(marker_dir)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.global_step != 1:
            return
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        (self.marker_dir / f"rank{trainer.global_rank}.pid").write_text(str(os.getpid()))
        if trainer.global_rank == 0:
            (self.marker_dir / "waiting").touch()
            trainer.strategy.reduce(torch.ones(1))
        else:
            while True:
                time.sleep(0.5)
