"""callbacks.ModelCheckpoint: last.ckpt follows the latest epoch even when the monitored metric stops improving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks import ModelCheckpoint


class WorseningModel(BoringModel):
    """Logs ``val/loss`` = the epoch number: only epoch 0 is ever the best."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", float(self.current_epoch))


@pytest.mark.parametrize(("checkpoint_class", "last_epoch"), [(ModelCheckpoint, 2), (LightningModelCheckpoint, 0)])
def test_last_checkpoint_is_the_latest_epoch(
    tiny_trainer_kwargs: dict[str, Any], tmp_path: Path, checkpoint_class: type, last_epoch: int
) -> None:
    checkpoint = checkpoint_class(dirpath=tmp_path / "ckpt", monitor="val/loss", save_last=True)
    kwargs = {**tiny_trainer_kwargs, "max_epochs": 3, "enable_checkpointing": True, "callbacks": [checkpoint]}
    Trainer(**kwargs).fit(WorseningModel())

    assert torch.load(checkpoint.best_model_path, weights_only=False)["epoch"] == 0
    # Lightning 2.6's own class leaves last.ckpt at the best epoch (the row documenting why ours exists).
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["epoch"] == last_epoch
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]


@pytest.mark.parametrize(("checkpoint_class", "files_written"), [(ModelCheckpoint, False), (LightningModelCheckpoint, True)])
def test_fast_dev_run_writes_no_checkpoint(
    tiny_trainer_kwargs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint_class: type,
    files_written: bool,
) -> None:
    monkeypatch.chdir(tmp_path)  # Lightning's class writes last.ckpt under the working directory here
    kwargs = {**tiny_trainer_kwargs, "fast_dev_run": True, "enable_checkpointing": True,
              "callbacks": [checkpoint_class(monitor="val/loss", save_last=True)]}
    Trainer(**kwargs).fit(WorseningModel())
    # Lightning 2.6's own class saves last.ckpt in on_train_end even under fast_dev_run (the row for ours).
    assert any(tmp_path.rglob("*.ckpt")) is files_written
