"""Shared pieces of the LR range test's tests: a tiny CNN2 classifier on the digits, state snapshots, an LR probe."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torchmetrics import Metric

from datamodules import DigitsDataModule
from lit_cv import Classifier
from lit_cv.nets import CNN2

SIDE = 12  # smallest image side CNN2 takes


@pytest.fixture
def trainer_kwargs(tiny_trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**tiny_trainer_kwargs, "limit_train_batches": 2, "limit_val_batches": 0, "num_sanity_val_steps": 0}


@pytest.fixture
def make_model() -> Callable[..., Classifier]:
    """``make_model(**classifier_kwargs)``: a small CNN2 classifier for 12x12 digits."""

    def make(**kwargs: Any) -> Classifier:
        net = CNN2(n_feature=3, p=0.3, in_channels=1, num_classes=10, image_size=SIDE)
        return Classifier(net, num_classes=10, **kwargs)

    return make


@pytest.fixture
def make_data() -> Callable[[], DigitsDataModule]:
    return lambda: DigitsDataModule(batch_size=16, image_size=SIDE)


class LRProbe(Callback):
    """Records the LR of each training batch and the batches seen per epoch."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.batches_per_epoch: dict[int, int] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.batches_per_epoch[trainer.current_epoch] = self.batches_per_epoch.get(trainer.current_epoch, 0) + 1


@pytest.fixture
def make_probe() -> type[LRProbe]:
    return LRProbe


def _snapshot(trainer: Trainer, pl_module: Classifier) -> dict[str, Any]:
    return copy.deepcopy({
        "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in pl_module.parameters()],
        "optimizers": [opt.state_dict() for opt in trainer.optimizers],
        "schedulers": [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs],
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "fit_loop": trainer.fit_loop.state_dict(),
        "global_step": trainer.global_step,
        "modes": {name: m.training for name, m in pl_module.named_modules()},
        "metrics": [m.metric_state for m in pl_module.modules() if isinstance(m, Metric)],
        "callback_metrics": {k: v.clone() for k, v in trainer.callback_metrics.items()},
    })


def _assert_identical(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        same = a == b
        if a.is_floating_point():
            same |= a.isnan() & b.isnan()  # a NaN metric stays NaN
        assert bool(same.all()), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def snapshot() -> Callable[[Trainer, Classifier], dict[str, Any]]:
    """``snapshot(trainer, module)``: a deep copy of everything the range test must leave as it was."""
    return _snapshot


@pytest.fixture
def assert_identical() -> Callable[..., None]:
    """``assert_identical(a, b, where)``: two snapshots are equal bit for bit (NaN equal to NaN)."""
    return _assert_identical
