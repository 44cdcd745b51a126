"""Fixtures of the callback tests: a tiny CPU Trainer that logs to TensorBoard, for a callback under test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger


@pytest.fixture
def make_trainer(tiny_trainer_kwargs: dict[str, Any], tmp_path: Path) -> Callable[..., Trainer]:
    """``make_trainer(callbacks, max_epochs=2, logger="tb", root=None)``: the shared tiny CPU trainer (4 training
    batches, 1 validation batch, no sanity check) logging to TensorBoard (or to ``logger``) under ``root`` or
    tmp_path."""

    def make(callbacks: list, max_epochs: int = 2, logger: object = "tb", root: Path | None = None) -> Trainer:
        root = root or tmp_path
        return Trainer(
            **{
                **tiny_trainer_kwargs,
                "default_root_dir": str(root),
                "max_epochs": max_epochs,
                "limit_train_batches": 4,
                "limit_val_batches": 1,
                "num_sanity_val_steps": 0,
                "logger": TensorBoardLogger(root, name="callback") if logger == "tb" else logger,
                "callbacks": callbacks,
            }
        )

    return make
