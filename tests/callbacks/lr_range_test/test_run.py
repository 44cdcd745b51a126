"""run_lr_range_test inside real ``Trainer.fit`` runs on the digits: it leaves no trace (mid-fit, and when it
raises), reads the validation loss, stops on divergence, and refuses set-ups it cannot leave without a trace."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from callbacks import LRRangeTest
from callbacks.lr_range_test.params import LRRangeTestParams
from callbacks.lr_range_test.run import check_supported, run_lr_range_test


class _MidFitRangeTest(Callback):
    """Runs the range test at the start of epoch 1, when Adam has moments, the scheduler has stepped, the fit loop
    has counters and metrics hold values: everything must be identical after."""

    def __init__(self, snapshot: Any, params: LRRangeTestParams) -> None:
        self.snapshot = snapshot
        self.params = params
        self.before: dict[str, Any] | None = None
        self.after: dict[str, Any] | None = None
        self.result = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.current_epoch != 1:
            return
        self.before = self.snapshot(trainer, pl_module)
        self.result = run_lr_range_test(trainer, pl_module, self.params)
        self.after = self.snapshot(trainer, pl_module)


@pytest.mark.parametrize("val_batches, step_mode", [(0, "exp"), (2, "linear")])
def test_mid_fit_state_optimizer_scheduler_rng_and_loop_are_restored(
    trainer_kwargs, make_model, make_data, snapshot, assert_identical, val_batches, step_mode
):
    seed_everything(5)
    model = make_model(optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                       lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    params = LRRangeTestParams(start_lr=1e-3, end_lr=10.0, num_iter=5, diverge_th=None, val_batches=val_batches,
                               step_mode=step_mode)
    probe = _MidFitRangeTest(snapshot, params)
    kwargs = {**trainer_kwargs, "max_epochs": 2, "limit_train_batches": 1, "limit_val_batches": 1}
    Trainer(**kwargs, callbacks=[probe]).fit(model, datamodule=make_data())
    assert probe.before["optimizers"][0]["state"], "Adam should have moments by epoch 1"
    assert probe.before["schedulers"][0]["last_epoch"] == 1
    assert probe.before["callback_metrics"], "epoch 0 logged metrics"
    assert_identical(probe.before, probe.after, "state")
    spaced = np.geomspace if step_mode == "exp" else np.linspace
    np.testing.assert_allclose(probe.result.lrs, spaced(1e-3, 10.0, 6), rtol=1e-12)


def test_val_batches_record_the_validation_loss(trainer_kwargs, make_model, make_data):
    """At a negligible LR the first recorded loss is the model's loss on the first two validation batches."""
    seed_everything(2)
    model = make_model()
    data = make_data()
    data.setup("fit")
    batches = [b for _, b in zip(range(2), data.val_dataloader())]
    model.eval()
    with torch.no_grad():
        expected = float(torch.stack([model.compute_loss(model(x), y) for x, y in batches]).mean())
    model.train()
    finder = LRRangeTest(start_lr=1e-12, end_lr=1e-11, num_iter=2, val_batches=2, skip_begin=0, skip_end=0,
                         exit_after=True)
    Trainer(**trainer_kwargs, callbacks=[finder]).fit(model, datamodule=data)
    assert finder.result.raw_losses[0] == pytest.approx(expected, rel=1e-6)


def test_fit_with_the_test_equals_fit_without_it(trainer_kwargs, make_model, make_data, make_probe, assert_identical):
    """Same seed, shuffled data, dropout: the run after the test is the run without it (no RNG, data or optimizer
    trace), with no epoch skipped (Lightning #15603)."""

    def run(with_finder: bool) -> tuple[dict[str, torch.Tensor], Any, Trainer]:
        seed_everything(11)
        model = make_model()
        probe = make_probe()
        callbacks = [LRRangeTest(num_iter=6, skip_begin=1), probe] if with_finder else [probe]
        trainer = Trainer(**{**trainer_kwargs, "max_epochs": 2}, callbacks=callbacks)
        trainer.fit(model, datamodule=make_data())
        return model.state_dict(), probe, trainer

    weights_without, probe_without, trainer_without = run(False)
    weights_with, probe_with, trainer_with = run(True)
    assert_identical(weights_without, weights_with, "weights")
    assert probe_with.batches_per_epoch == probe_without.batches_per_epoch == {0: 2, 1: 2}
    assert trainer_with.current_epoch == trainer_without.current_epoch == 2
    assert trainer_with.global_step == trainer_without.global_step == 4


def test_divergence_stops_the_test(trainer_kwargs, make_model, make_data):
    finder = LRRangeTest(start_lr=1.0, end_lr=1e8, num_iter=16, diverge_th=1.5, smoothing=0.5, skip_begin=0,
                         exit_after=True)
    Trainer(**trainer_kwargs, callbacks=[finder]).fit(make_model(), datamodule=make_data())
    result = finder.result
    assert result.stopped_early and len(result.lrs) < 17
    finite = [v for v in result.losses[:-1] if math.isfinite(v)]
    last = result.losses[-1]
    assert not math.isfinite(last) or last > 1.5 * min(finite)


class _FailingRangeTest(Callback):
    """Runs the range test at the start of epoch 1 with a training_step that raises on its third call."""

    def __init__(self, snapshot: Any) -> None:
        self.snapshot = snapshot
        self.before: dict[str, Any] | None = None
        self.after: dict[str, Any] | None = None
        self.error: Exception | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.current_epoch != 1:
            return
        self.before = self.snapshot(trainer, pl_module)
        original, calls = pl_module.training_step, []

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("boom in step 3")
            return original(*args, **kwargs)

        pl_module.training_step = failing
        try:
            run_lr_range_test(trainer, pl_module, LRRangeTestParams(start_lr=1e-3, end_lr=10.0, num_iter=5))
        except RuntimeError as error:
            self.error = error
        finally:
            pl_module.training_step = original
        self.after = self.snapshot(trainer, pl_module)


def test_state_is_restored_when_the_test_raises(trainer_kwargs, make_model, make_data, snapshot, assert_identical):
    seed_everything(8)
    probe = _FailingRangeTest(snapshot)
    model = make_model(optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    Trainer(**{**trainer_kwargs, "max_epochs": 2, "limit_train_batches": 1}, callbacks=[probe]).fit(
        model, datamodule=make_data()
    )
    assert str(probe.error) == "boom in step 3"
    assert_identical(probe.before, probe.after, "state")


def test_multi_process_ddp_is_refused():
    trainer = SimpleNamespace(world_size=2, optimizers=[object()])
    with pytest.raises(ValueError, match=r"world_size=2 .*--trainer.devices 1"):
        check_supported(trainer, SimpleNamespace(automatic_optimization=True))


def test_manual_optimization_and_several_optimizers_are_refused():
    with pytest.raises(ValueError, match="automatic_optimization=False"):
        check_supported(SimpleNamespace(world_size=1, optimizers=[object()]),
                        SimpleNamespace(automatic_optimization=False))
    with pytest.raises(ValueError, match="exactly one optimizer; configure_optimizers returned 2"):
        check_supported(SimpleNamespace(world_size=1, optimizers=[object(), object()]),
                        SimpleNamespace(automatic_optimization=True))
