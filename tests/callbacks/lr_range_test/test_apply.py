"""apply_suggestion through ``LRRangeTest(apply=True)`` in real fits: the optimizer's LR and factory, CyclicLR
bounds, OneCycleLR's max_lr; each checked against the LRs an independently built scheduler gives."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from callbacks import LRRangeTest


def _reference_lrs(scheduler_factory: Any, steps: int) -> list[float]:
    """LRs an independently built scheduler gives its first ``steps`` batches."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    scheduler = scheduler_factory(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# `minimum` suggests on any 7-point curve of 2 batches (noise; valley, the default, needs a descent before the
# minimum and may give none): what these tests check is how the suggestion is applied.


def test_apply_sets_the_optimizer_lr_and_factory(trainer_kwargs, make_model, make_data, make_probe):
    probe = make_probe()
    finder = LRRangeTest(start_lr=1e-4, end_lr=1.0, num_iter=6, skip_begin=1, method="minimum", apply=True)
    model = make_model(optimizer=functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9))
    Trainer(**trainer_kwargs, callbacks=[finder, probe]).fit(model, datamodule=make_data())
    suggestion = finder.result.suggestion
    assert suggestion is not None and suggestion != 1e-3
    assert probe.lrs == [suggestion] * 2
    rebuilt = model.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(rebuilt, torch.optim.SGD) and rebuilt.param_groups[0]["lr"] == suggestion
    assert rebuilt.param_groups[0]["momentum"] == 0.9
    assert finder.applied == f"optimizer LR set to {suggestion:.4g}"


def test_apply_sets_cyclic_lr_bounds(trainer_kwargs, make_model, make_data, make_probe):
    probe = make_probe()
    finder = LRRangeTest(start_lr=1e-4, end_lr=1.0, num_iter=6, skip_begin=1, method="minimum", apply=True,
                         bound_ratio=5.0)
    model = make_model(
        optimizer=functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CyclicLR, base_lr=1e-4, max_lr=1e-3, step_size_up=2),
        scheduler_interval="step",
    )
    Trainer(**{**trainer_kwargs, "max_epochs": 2}, callbacks=[finder, probe]).fit(model, datamodule=make_data())
    top = finder.result.suggestion
    expected = _reference_lrs(
        functools.partial(torch.optim.lr_scheduler.CyclicLR, base_lr=top / 5, max_lr=top, step_size_up=2), 4
    )
    np.testing.assert_allclose(probe.lrs, expected, rtol=1e-12)
    assert probe.lrs[0] == pytest.approx(top / 5) and max(probe.lrs) == pytest.approx(top)
    assert model.lr_scheduler_factory.keywords["max_lr"] == top


def test_apply_sets_one_cycle_max_lr(trainer_kwargs, make_model, make_data, make_probe):
    probe = make_probe()
    finder = LRRangeTest(start_lr=1e-4, end_lr=1.0, num_iter=6, skip_begin=1, method="minimum", apply=True)
    model = make_model(
        optimizer=functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-2, total_steps=4),
        scheduler_interval="step",
    )
    Trainer(**{**trainer_kwargs, "max_epochs": 2}, callbacks=[finder, probe]).fit(model, datamodule=make_data())
    top = finder.result.suggestion
    expected = _reference_lrs(
        functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=top, total_steps=4), 4
    )
    np.testing.assert_allclose(probe.lrs, expected, rtol=1e-12)
    assert probe.lrs[0] == pytest.approx(top / 25)
