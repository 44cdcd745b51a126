"""callbacks.ModelCheckpoint: last.ckpt follows the latest epoch even when the monitored metric stops improving;
checkpoints are written atomically (a full disk leaves the earlier ones intact) and read with weights_only=True."""

from __future__ import annotations

import errno
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import fake_data
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks import ModelCheckpoint
from callbacks.model_checkpoint import SafeCheckpointIO, atomic_torch_save, load_checkpoint_safely


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

    assert load_checkpoint_safely(checkpoint.best_model_path)["epoch"] == 0
    # Lightning 2.6's own class leaves last.ckpt at the best epoch (the row documenting why ours exists).
    assert load_checkpoint_safely(tmp_path / "ckpt" / "last.ckpt")["epoch"] == last_epoch
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


# ---------------------------------------------------------------------------------------------- a full disk
class ImprovingModel(BoringModel):
    """Logs ``val/loss`` = -epoch: every epoch is a new best, so every epoch writes a new ``epoch=N-*.ckpt``."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", -float(self.current_epoch))


class FullDisk:
    """Simulates the checkpoint folder's disk filling up while the system temp folder is another disk: once ``full``,
    every write into ``folder`` stops with ENOSPC after half its bytes, and a rename into it from outside fails with
    EXDEV (as between two filesystems), so a move falls back to copying."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
        self.folder, self.full = folder.resolve(), False
        self._save, self._copyfile = torch.save, shutil.copyfile
        self._rename, self._replace = os.rename, os.replace
        monkeypatch.setattr(torch, "save", self.save)
        monkeypatch.setattr(shutil, "copyfile", self.copyfile)
        monkeypatch.setattr(os, "rename", self.move(self._rename))
        monkeypatch.setattr(os, "replace", self.move(self._replace))

    def inside(self, target: Any) -> bool:
        name = getattr(target, "name", target)
        return isinstance(name, (str, os.PathLike)) and Path(name).resolve().is_relative_to(self.folder)

    def _write_half(self, data: bytes, target: Any) -> None:
        if hasattr(target, "write"):
            target.write(data[: len(data) // 2])
            target.flush()
        else:
            Path(target).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def save(self, obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if not (self.full and self.inside(target)):
            return self._save(obj, target, *args, **kwargs)
        buffer = io.BytesIO()
        self._save(obj, buffer)
        self._write_half(buffer.getvalue(), target)

    def copyfile(self, src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        if not (self.full and self.inside(dst)):
            return self._copyfile(src, dst, *args, **kwargs)
        self._write_half(Path(src).read_bytes(), dst)

    def move(self, original: Any) -> Any:
        def move(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if self.inside(dst) and not self.inside(src):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return original(src, dst, *args, **kwargs)

        return move


@pytest.mark.parametrize(("checkpoint_class", "intact"), [(ModelCheckpoint, True), (LightningModelCheckpoint, False)])
def test_full_disk_leaves_the_earlier_checkpoints_intact(
    tiny_trainer_kwargs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint_class: type,
    intact: bool,
) -> None:
    folder = tmp_path / "ckpt"
    disk = FullDisk(monkeypatch, folder)
    fill = Callback()
    fill.on_train_epoch_start = lambda trainer, module: setattr(disk, "full", trainer.current_epoch == 1)
    checkpoint = checkpoint_class(dirpath=folder, monitor="val/loss", save_last=True)
    kwargs = {**tiny_trainer_kwargs, "max_epochs": 2, "enable_checkpointing": True, "callbacks": [fill, checkpoint]}
    with pytest.raises(OSError, match="No space left on device"):
        Trainer(**kwargs).fit(ImprovingModel())
    disk.full = False

    files = sorted(p.name for p in folder.iterdir())
    if not intact:  # Lightning 2.6 leaves a half-written best checkpoint (the row documenting why ours exists)
        assert "epoch=1-step=8.ckpt" in files
        with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
            load_checkpoint_safely(folder / "epoch=1-step=8.ckpt")
        return
    assert files == ["epoch=0-step=4.ckpt", "last.ckpt"]  # no partial file, no temporary file left behind
    for name in files:
        assert load_checkpoint_safely(folder / name)["epoch"] == 0


def test_atomic_save_replaces_only_a_complete_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "best.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(2)}}, path)
    FullDisk(monkeypatch, tmp_path).full = True
    with pytest.raises(OSError, match=r"Could not write checkpoint .*best.ckpt.*checkpoints written before are intact"):
        atomic_torch_save({"state_dict": {"w": torch.zeros(2)}}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]
    assert torch.equal(load_checkpoint_safely(path)["state_dict"]["w"], torch.ones(2))


# ---------------------------------------------------------------------------------------------- untrusted files
def _bad_files(folder: Path) -> dict[str, Path]:
    marker = folder / "marker"
    good = {"state_dict": {"w": torch.ones(2)}, "epoch": 0}
    files = {"planted": folder / "planted.ckpt", "empty": folder / "empty.ckpt", "text": folder / "text.ckpt",
             "truncated": folder / "truncated.ckpt", "other": folder / "other.ckpt"}
    fake_data.plant_payload(files["planted"], marker, good)
    files["empty"].write_bytes(b"")
    files["text"].write_text("epoch: 3\nthis is not a checkpoint\n")
    torch.save(good, files["truncated"])
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:300])
    torch.save([torch.ones(2)], files["other"])
    return files


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("planted", r"Refusing to load checkpoint .*planted.ckpt.*pickled Python object \(exec\)"),
        ("empty", r"Checkpoint .*empty.ckpt.* is empty \(0 bytes\)"),
        ("text", r".*text.ckpt.* is not a readable PyTorch checkpoint"),
        ("truncated", r".*truncated.ckpt.* is not a readable PyTorch checkpoint: corrupt, truncated"),
        ("other", r".*other.ckpt.* is not a Lightning checkpoint \(it holds list"),
    ],
)
def test_bad_checkpoint_files_get_one_clear_message(tmp_path: Path, kind: str, match: str) -> None:
    files = _bad_files(tmp_path)
    with pytest.raises(ValueError, match=match) as raised:
        SafeCheckpointIO().load_checkpoint(files[kind], weights_only=True)
    assert "weights_only" not in str(raised.value) and raised.value.__cause__ is None
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("how", ["weights_only=False", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"])
def test_fit_from_a_planted_checkpoint_never_runs_it(
    tiny_trainer_kwargs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    kwargs = {**tiny_trainer_kwargs, "enable_checkpointing": True, "max_epochs": 2}
    Trainer(**{**kwargs, "max_epochs": 1, "callbacks": [ModelCheckpoint(dirpath=tmp_path, save_last=True)]}).fit(
        BoringModel()
    )
    checkpoint = load_checkpoint_safely(tmp_path / "last.ckpt")
    planted, marker = tmp_path / "planted.ckpt", tmp_path / "marker"
    fake_data.plant_payload(planted, marker, checkpoint)  # a resumable checkpoint with a payload
    if how.startswith("TORCH_FORCE"):
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # makes torch's default weights_only=False
    trainer = Trainer(**{**kwargs, "callbacks": [ModelCheckpoint(dirpath=tmp_path / "resumed")]})
    with pytest.raises(ValueError, match=r"Refusing to load checkpoint .*planted.ckpt"), warnings.catch_warnings(
        record=True
    ) as warned:
        warnings.simplefilter("always")
        trainer.fit(BoringModel(), ckpt_path=planted, weights_only=False if how == "weights_only=False" else None)
    assert not marker.exists()
    asked = [w for w in warned if "although weights_only=False was asked" in str(w.message)]
    assert len(asked) == (how == "weights_only=False")
