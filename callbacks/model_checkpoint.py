"""Save checkpoints of the best models and ``last.ckpt`` at every checkpointing point (each validation), write them
atomically and read checkpoints without ever unpickling code."""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

# Classes a checkpoint may hold besides tensors and plain containers: paths (a datamodule's ``data_dir`` given as a
# Path lands in ``datamodule_hyper_parameters``). Rebuilding them runs no code beyond making a path.
SAFE_GLOBALS = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_checkpoint_safely(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint's dict read with ``torch.load(weights_only=True)``: tensors, numbers, strings, containers and
    :data:`SAFE_GLOBALS` only, so a planted pickle payload is never executed.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming the file and what is wrong: empty, corrupt or truncated, not a checkpoint, or holding
            pickled Python objects (refused).
    """
    fs = get_filesystem(str(path))
    if not fs.exists(str(path)):
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    if fs.size(str(path)) == 0:
        raise ValueError(
            f"Checkpoint {str(path)!r} is empty (0 bytes): an interrupted save or a full disk. "
            "Use another checkpoint of the run (last.ckpt or a best-*.ckpt)."
        )
    try:
        with fs.open(str(path), "rb") as handle, torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(handle, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _UNSUPPORTED_GLOBAL.search(str(err))
        if found:
            raise ValueError(
                f"Refusing to load checkpoint {str(path)!r}: it holds a pickled Python object "
                f"({found.group(1)}), which could run code when loaded. lit-cv loads only tensors "
                "and plain values; checkpoints written by lit-cv hold nothing else. Use a checkpoint from a source "
                "you trust, written by lit-cv."
            ) from None
        raise _corrupt(path, err) from None
    except Exception as err:  # noqa: BLE001 - torch's readers fail in many ways on a damaged file (KeyError, ...)
        raise _corrupt(path, err) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        what = f"keys {sorted(map(str, checkpoint))[:6]}" if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{str(path)!r} is not a Lightning checkpoint (it holds {what}, no `state_dict`). Pass a .ckpt file "
            "written by `lit-cv fit` (runs/<name>/version_N/checkpoints/)."
        )
    return checkpoint


def _corrupt(path: str | Path, err: BaseException) -> ValueError:
    text = str(err).splitlines()[0] if str(err) else ""
    reason = f"{type(err).__name__}: {text.split('. ')[0][:120]}" if text else type(err).__name__
    return ValueError(
        f"{str(path)!r} is not a readable PyTorch checkpoint: corrupt, truncated or another kind of file ({reason}). "
        "Use another checkpoint of the run (last.ckpt or a best-*.ckpt)."
    )


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, flushed to disk, then ``os.replace``: a failed write
    (full disk, killed process) leaves the previous file at ``path`` intact and no partial file.

    Raises:
        OSError: the write failed (message names the file; the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OSError(
                err.errno,
                f"Could not write checkpoint {str(path)!r} ({err.strerror or err}); the checkpoints written before "
                "are intact. Free disk space, or set `checkpoint.dirpath` to another disk.",
            ) from err
        raise


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with two guarantees: files are read with ``weights_only=True`` only (a request for
    ``weights_only=False``, e.g. ``--weights_only false``, is ignored with a warning, and the environment variable
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot switch it off), and local files are written atomically
    (:func:`atomic_torch_save`).
    :class:`ModelCheckpoint` installs it on the strategy in ``setup``, before Lightning restores ``ckpt_path``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's transaction
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            rank_zero_warn(
                f"Loading {str(path)!r} with weights_only=True although weights_only=False was asked: lit-cv never "
                "unpickles Python objects from a file."
            )
        return load_checkpoint_safely(path, map_location if map_location is not None else "cpu")


def install_safe_checkpoint_io(trainer: Trainer) -> None:
    """Give the trainer's strategy a :class:`SafeCheckpointIO` unless it has a special one (e.g. XLA, async)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO()


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's :class:`~lightning.pytorch.callbacks.ModelCheckpoint`, except that

    - ``save_last=True`` refreshes ``last.ckpt`` at every checkpointing point (each validation, or each training
      epoch end without validation), so ``--ckpt_path last`` (and a SLURM requeue) continue from the latest epoch,
      not from the best one;
    - checkpoints are written atomically (temporary file in the same folder, then rename): a full disk or a killed
      process leaves the earlier checkpoints intact and never a partial ``best-*.ckpt``;
    - every checkpoint the trainer reads (``--ckpt_path`` for fit/validate/test/predict) is loaded with
      ``weights_only=True``: a pickle payload planted in a checkpoint is refused, never executed.

    The last two come from :class:`SafeCheckpointIO`, which ``setup`` installs on the strategy. Same arguments as
    Lightning's; the ``lit-cv`` CLI uses this class for its ``checkpoint:`` group.

    Example::

        checkpoint:          # lit-cv fit --config ...
          monitor: val/loss
          save_last: true
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Workaround, see docs/lightning-workarounds.md (Lightning's checkpoint loading and non-atomic local save).
        install_safe_checkpoint_io(trainer)
        super().setup(trainer, pl_module, stage)

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
