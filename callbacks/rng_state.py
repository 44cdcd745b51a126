"""Save the random number generator states in checkpoints and restore them on resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def collect_rng_states() -> dict[str, Any]:
    """The global states of Python's ``random``, NumPy and torch (CPU and every CUDA device), as tensors, ints and
    lists only, so the checkpoint still loads with ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned (CUDA states only when the device count matches)."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    cuda = states.get("torch.cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RNGState(Callback):
    """Saves the random number generator states with every checkpoint and restores them on resume.

    Python's ``random``, NumPy and torch (CPU and CUDA) draw the shuffle order, augmentations and dropout masks;
    with their states in the checkpoint a resumed run draws what the uninterrupted run would. They are put back
    after the resumed run's sanity check (which draws from them too), right before the training data are iterated, so on
    deterministic kernels the resumed run reproduces the uninterrupted one bit for bit. A checkpoint saved in the
    middle of an epoch resumes correctly but not bit-exactly (the interrupted epoch's remaining batches are reshuffled).
    The ``lit-cv`` CLI adds this callback to every run.

    Example::

        trainer:
          callbacks:
            - class_path: callbacks.RNGState
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply()  # without a sanity check, nothing draws between here and the first training batch

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply()
        self._pending = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = None

    def _apply(self) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
