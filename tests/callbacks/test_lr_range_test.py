"""LRRangeTest inside real ``Trainer.fit`` runs on the digits: no trace left, LR sequence, applying the suggestion to
the optimizer / CyclicLR / OneCycleLR / a CLI-built optimizer, resume, files, and the Lightning bugs it avoids."""

from __future__ import annotations

import copy
import functools
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

import callbacks.lr_range_test as lr_range_test_module
from callbacks import LRRangeTest
from datamodules import DigitsDataModule
from lit_cv import Classifier
from lit_cv.lr_range_test import lr_sequence, run_lr_range_test
from lit_cv.nets import CNN2

REPO_ROOT = Path(__file__).resolve().parents[2]
SIDE = 12  # smallest image side CNN2 takes


def _model(**kwargs: Any) -> Classifier:
    net = CNN2(n_feature=3, p=0.3, in_channels=1, num_classes=10, image_size=SIDE)
    return Classifier(net, num_classes=10, **kwargs)


def _data() -> DigitsDataModule:
    return DigitsDataModule(batch_size=16, image_size=SIDE)


@pytest.fixture
def trainer_kwargs(tiny_trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**tiny_trainer_kwargs, "limit_train_batches": 2, "limit_val_batches": 0, "num_sanity_val_steps": 0}


def _snapshot(trainer: Trainer, pl_module: Classifier) -> dict[str, Any]:
    from torchmetrics import Metric

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
        "metrics": [m._copy_state_dict() for m in pl_module.modules() if isinstance(m, Metric)],
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


class _Snapshot(Callback):
    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: Classifier) -> None:
        self.state = _snapshot(trainer, pl_module)


class _LRProbe(Callback):
    """Records the LR of each training batch and the batches seen per epoch."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.batches_per_epoch: dict[int, int] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.batches_per_epoch[trainer.current_epoch] = self.batches_per_epoch.get(trainer.current_epoch, 0) + 1


class _CountSteps(Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_fit_start(self, trainer: Trainer, pl_module: Classifier) -> None:
        original = pl_module.training_step

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        pl_module.training_step = counting


# ------------------------------------------------------------------------------------------ leaves no trace
def test_weights_and_state_are_bitwise_restored_lrs_follow_the_formula_and_the_curve_is_logged(
    trainer_kwargs, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seed_everything(3)
    before, after, counter = _Snapshot(), _Snapshot(), _CountSteps()
    finder = LRRangeTest(start_lr=1e-4, end_lr=1.0, num_iter=8, diverge_th=None, skip_begin=1)
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    trainer = Trainer(**{**trainer_kwargs, "logger": logger, "limit_train_batches": 1},
                      callbacks=[counter, before, finder, after])
    trainer.fit(_model(), datamodule=_data())
    _assert_identical(before.state, after.state, "state")
    assert counter.calls == 9 + 1  # the test really trained (9 LRs), then the one training batch
    np.testing.assert_allclose(finder.result.lrs, np.geomspace(1e-4, 1.0, 9), rtol=1e-12)
    assert len(set(finder.result.raw_losses)) > 1

    run_dir = Path(logger.log_dir)
    data = json.loads((run_dir / "lr_range_test.json").read_text())
    assert data["lrs"] == finder.result.lrs and data["suggestion"] == finder.result.suggestion
    assert data["suggestion"] is not None and set(data["suggestions"]) == {"steepest", "valley", "minimum"}
    assert finder.paths["png"] == run_dir / "lr_range_test.png" and finder.paths["png"].stat().st_size > 0
    events = EventAccumulator(str(run_dir)).Reload()
    assert "lr_range_test/curve" in events.Tags()["images"]
    assert events.Scalars("lr_range_test/suggested_lr")[0].value == pytest.approx(finder.result.suggestion)


class _MidFitRangeTest(Callback):
    """Runs the range test at the start of epoch 1, when Adam has moments, the scheduler has stepped, the fit loop
    has counters and metrics hold values: everything must be identical after."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.before: dict[str, Any] | None = None
        self.after: dict[str, Any] | None = None
        self.result = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Classifier) -> None:
        if trainer.current_epoch != 1:
            return
        self.before = _snapshot(trainer, pl_module)
        self.result = run_lr_range_test(trainer, pl_module, **self.kwargs)
        self.after = _snapshot(trainer, pl_module)


@pytest.mark.parametrize("val_batches, step_mode", [(0, "exp"), (2, "linear")])
def test_mid_fit_state_optimizer_scheduler_rng_and_loop_are_restored(trainer_kwargs, val_batches, step_mode):
    seed_everything(5)
    model = _model(optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                   lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    probe = _MidFitRangeTest(start_lr=1e-3, end_lr=10.0, num_iter=5, diverge_th=None, val_batches=val_batches,
                             step_mode=step_mode)
    kwargs = {**trainer_kwargs, "max_epochs": 2, "limit_train_batches": 1, "limit_val_batches": 1}
    Trainer(**kwargs, callbacks=[probe]).fit(model, datamodule=_data())
    assert probe.before["optimizers"][0]["state"], "Adam should have moments by epoch 1"
    assert probe.before["schedulers"][0]["last_epoch"] == 1
    assert probe.before["callback_metrics"], "epoch 0 logged metrics"
    _assert_identical(probe.before, probe.after, "state")
    spaced = np.geomspace if step_mode == "exp" else np.linspace
    np.testing.assert_allclose(probe.result.lrs, spaced(1e-3, 10.0, 6), rtol=1e-12)


def test_val_batches_record_the_validation_loss(trainer_kwargs):
    """At a negligible LR the first recorded loss is the model's loss on the first two validation batches."""
    seed_everything(2)
    model = _model()
    data = _data()
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


def test_fit_with_the_test_equals_fit_without_it(trainer_kwargs):
    """Same seed, shuffled data, dropout: the run after the test is the run without it (no RNG, data or optimizer
    trace), with no epoch skipped (Lightning #15603)."""

    def run(with_finder: bool) -> tuple[dict[str, torch.Tensor], _LRProbe, Trainer]:
        seed_everything(11)
        model = _model()
        probe = _LRProbe()
        callbacks = [LRRangeTest(num_iter=6, skip_begin=1), probe] if with_finder else [probe]
        trainer = Trainer(**{**trainer_kwargs, "max_epochs": 2}, callbacks=callbacks)
        trainer.fit(model, datamodule=_data())
        return model.state_dict(), probe, trainer

    weights_without, probe_without, trainer_without = run(False)
    weights_with, probe_with, trainer_with = run(True)
    _assert_identical(weights_without, weights_with, "weights")
    assert probe_with.batches_per_epoch == probe_without.batches_per_epoch == {0: 2, 1: 2}
    assert trainer_with.current_epoch == trainer_without.current_epoch == 2
    assert trainer_with.global_step == trainer_without.global_step == 4


# ------------------------------------------------------------------------------------------ applying the suggestion
def test_apply_sets_the_optimizer_lr_and_factory(trainer_kwargs):
    probe = _LRProbe()
    finder = LRRangeTest(start_lr=1e-4, end_lr=1.0, num_iter=6, skip_begin=1, apply=True)
    model = _model(optimizer=functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9))
    Trainer(**trainer_kwargs, callbacks=[finder, probe]).fit(model, datamodule=_data())
    suggestion = finder.result.suggestion
    assert suggestion is not None and suggestion != 1e-3
    assert probe.lrs == [suggestion] * 2
    rebuilt = model.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(rebuilt, torch.optim.SGD) and rebuilt.param_groups[0]["lr"] == suggestion
    assert rebuilt.param_groups[0]["momentum"] == 0.9
    assert finder.applied == f"optimizer LR set to {suggestion:.4g}"


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


def test_apply_sets_cyclic_lr_bounds(trainer_kwargs):
    probe = _LRProbe()
    finder = LRRangeTest(start_lr=1e-4, end_lr=1.0, num_iter=6, skip_begin=1, apply=True, bound_ratio=5.0)
    model = _model(
        optimizer=functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CyclicLR, base_lr=1e-4, max_lr=1e-3, step_size_up=2),
        scheduler_interval="step",
    )
    Trainer(**{**trainer_kwargs, "max_epochs": 2}, callbacks=[finder, probe]).fit(model, datamodule=_data())
    top = finder.result.suggestion
    expected = _reference_lrs(
        functools.partial(torch.optim.lr_scheduler.CyclicLR, base_lr=top / 5, max_lr=top, step_size_up=2), 4
    )
    np.testing.assert_allclose(probe.lrs, expected, rtol=1e-12)
    assert probe.lrs[0] == pytest.approx(top / 5) and max(probe.lrs) == pytest.approx(top)
    assert model.lr_scheduler_factory.keywords["max_lr"] == top


def test_apply_sets_one_cycle_max_lr(trainer_kwargs):
    probe = _LRProbe()
    finder = LRRangeTest(start_lr=1e-4, end_lr=1.0, num_iter=6, skip_begin=1, apply=True)
    model = _model(
        optimizer=functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-2, total_steps=4),
        scheduler_interval="step",
    )
    Trainer(**{**trainer_kwargs, "max_epochs": 2}, callbacks=[finder, probe]).fit(model, datamodule=_data())
    top = finder.result.suggestion
    expected = _reference_lrs(
        functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=top, total_steps=4), 4
    )
    np.testing.assert_allclose(probe.lrs, expected, rtol=1e-12)
    assert probe.lrs[0] == pytest.approx(top / 25)


def _cli_args(tmp_path: Path, *extra: str) -> list[str]:
    config = tmp_path / "finder.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: callbacks.LRRangeTest\n"
        "      init_args: {start_lr: 1.0e-4, end_lr: 1.0, num_iter: 6, skip_begin: 1, apply: true}\n"
    )
    return [
        "--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), "--config", str(config),
        "--model.net.init_args.n_feature=3", f"--model.net.init_args.image_size={SIDE}",
        f"--data.init_args.image_size={SIDE}", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]


def test_suggestion_survives_with_a_cli_built_optimizer_and_a_resumed_run_keeps_it(tmp_path, monkeypatch):
    """Lightning #21030/#16787: its finder writes `model.lr`, which an optimizer built by LightningCLI never reads,
    and restores the checkpoint over it. Here the LR of the first batch is the suggestion, the epoch scheduler
    (quickstart's cosine, T_max 20) continues from it, and a resumed run keeps result and LR without re-testing."""
    from lit_cv.cli import LitCVCLI

    cli = LitCVCLI(args=_cli_args(tmp_path, "--trainer.max_epochs=1"), run=False)
    finder = next(c for c in cli.trainer.callbacks if isinstance(c, LRRangeTest))
    probe = _LRProbe()
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    top = finder.result.suggestion
    assert top is not None and top != 0.002  # the config's Adam LR
    assert probe.lrs == [top]
    run_dir = Path(cli.trainer.log_dir)
    assert json.loads((run_dir / "lr_range_test.json").read_text())["suggestion"] == top
    assert (run_dir / "lr_range_test.png").stat().st_size > 0

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a resumed run must reuse the stored result")

    monkeypatch.setattr(lr_range_test_module, "run_lr_range_test", must_not_run)
    resumed = LitCVCLI(args=_cli_args(tmp_path, "--trainer.max_epochs=2"), run=False)
    resumed_finder = next(c for c in resumed.trainer.callbacks if isinstance(c, LRRangeTest))
    resumed_probe = _LRProbe()
    resumed.trainer.callbacks.append(resumed_probe)
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(run_dir / "checkpoints" / "last.ckpt"))
    assert resumed_finder.result.suggestion == top and resumed_finder.result.lrs == finder.result.lrs
    cosine_epoch_1 = top * (1 + math.cos(math.pi * 1 / 20)) / 2
    assert resumed_probe.lrs == pytest.approx([cosine_epoch_1], rel=1e-12)


# ------------------------------------------------------------------------------------------ reporting / edge cases
def test_too_short_curve_warns_and_training_goes_on(trainer_kwargs, tmp_path):
    probe = _LRProbe()
    finder = LRRangeTest(num_iter=4, apply=True)  # 5 points, skip_begin 10: no suggestion possible
    with pytest.warns(UserWarning, match="Raise num_iter"), pytest.warns(UserWarning, match="no suggestion to apply"):
        Trainer(**{**trainer_kwargs, "limit_train_batches": 1}, callbacks=[finder, probe]).fit(
            _model(), datamodule=_data()
        )
    assert finder.result.suggestion is None and len(finder.result.lrs) == 5
    assert probe.lrs == [1e-3]  # Classifier's default Adam LR, untouched
    assert json.loads((tmp_path / "lr_range_test.json").read_text())["suggestion"] is None


def test_divergence_stops_the_test(trainer_kwargs):
    finder = LRRangeTest(start_lr=1.0, end_lr=1e8, num_iter=16, diverge_th=1.5, smoothing=0.5, skip_begin=0,
                         exit_after=True)
    Trainer(**trainer_kwargs, callbacks=[finder]).fit(_model(), datamodule=_data())
    result = finder.result
    assert result.stopped_early and len(result.lrs) < 17
    finite = [v for v in result.losses[:-1] if math.isfinite(v)]
    last = result.losses[-1]
    assert not math.isfinite(last) or last > 1.5 * min(finite)


def test_multi_process_ddp_is_refused_at_fit_start():
    finder = LRRangeTest()
    trainer = SimpleNamespace(fast_dev_run=False, world_size=4, optimizers=[object()])
    with pytest.raises(ValueError, match=r"world_size=4 \(multi-process DDP\)"):
        finder.on_fit_start(trainer, SimpleNamespace(automatic_optimization=True))


def test_fast_dev_run_skips_the_test(trainer_kwargs):
    finder = LRRangeTest(num_iter=5)
    with pytest.warns(UserWarning, match="fast_dev_run"):
        Trainer(**{**trainer_kwargs, "fast_dev_run": True}, callbacks=[finder]).fit(_model(), datamodule=_data())
    assert finder.result is None


def test_state_dict_round_trip():
    finder = LRRangeTest()
    from lit_cv.lr_range_test import LRRangeTestResult

    lrs = lr_sequence(1e-4, 1.0, 20)
    finder.result = LRRangeTestResult.from_curve(lrs, [2.0 - 0.05 * i for i in range(21)], skip_begin=1)
    state = copy.deepcopy(finder.state_dict())
    other = LRRangeTest()
    other.load_state_dict(state)
    assert other.result == finder.result
    other.load_state_dict({})  # older checkpoints without the keys
    assert other.result is None and other.applied == ""
    assert LRRangeTest(num_iter=5).state_key != LRRangeTest(num_iter=6).state_key


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "fastest"}, r"method must be one of \('steepest', 'valley', 'minimum'\), got 'fastest'"),
        ({"step_mode": "log"}, r"step_mode must be one of \('exp', 'linear'\), got 'log'"),
        ({"diverge_th": 1.0}, "diverge_th must be > 1"),
        ({"bound_ratio": 0.5}, "bound_ratio .* must be > 1, got 0.5"),
        ({"val_batches": -1}, "val_batches must be >= 0"),
        ({"skip_end": -1}, "skip_begin and skip_end must be >= 0"),
        ({"start_lr": 1.0, "end_lr": 0.1}, "end_lr must be greater than start_lr"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRRangeTest(**kwargs)


class _FailingRangeTest(Callback):
    """Runs the range test at the start of epoch 1 with a training_step that raises on its third call."""

    def __init__(self) -> None:
        self.before: dict[str, Any] | None = None
        self.after: dict[str, Any] | None = None
        self.error: Exception | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Classifier) -> None:
        if trainer.current_epoch != 1:
            return
        self.before = _snapshot(trainer, pl_module)
        original, calls = pl_module.training_step, []

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("boom in step 3")
            return original(*args, **kwargs)

        pl_module.training_step = failing
        try:
            run_lr_range_test(trainer, pl_module, start_lr=1e-3, end_lr=10.0, num_iter=5)
        except RuntimeError as error:
            self.error = error
        finally:
            pl_module.training_step = original
        self.after = _snapshot(trainer, pl_module)


def test_state_is_restored_when_the_test_raises(trainer_kwargs):
    seed_everything(8)
    probe = _FailingRangeTest()
    model = _model(optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    Trainer(**{**trainer_kwargs, "max_epochs": 2, "limit_train_batches": 1}, callbacks=[probe]).fit(
        model, datamodule=_data()
    )
    assert str(probe.error) == "boom in step 3"
    _assert_identical(probe.before, probe.after, "state")
