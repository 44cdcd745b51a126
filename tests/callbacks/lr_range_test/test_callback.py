"""LRRangeTest in real ``Trainer.fit`` runs on the digits: no trace, the curve logged and written, a CLI-built
optimizer and a resumed run, warnings, fast_dev_run, state_dict, and its own arguments."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

import callbacks.lr_range_test.callback as callback_module
from callbacks import LRRangeTest
from callbacks.lr_range_test.curve import LRRangeTestResult, lr_sequence

REPO_ROOT = Path(__file__).resolve().parents[3]
SIDE = 12  # smallest image side CNN2 takes


class _Snapshot(Callback):
    def __init__(self, snapshot: Any) -> None:
        self.snapshot = snapshot
        self.state: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.state = self.snapshot(trainer, pl_module)


class _CountSteps(Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        original = pl_module.training_step

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        pl_module.training_step = counting


def test_weights_and_state_are_bitwise_restored_lrs_follow_the_formula_and_the_curve_is_logged(
    trainer_kwargs, make_model, make_data, snapshot, assert_identical, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seed_everything(3)
    before, after, counter = _Snapshot(snapshot), _Snapshot(snapshot), _CountSteps()
    finder = LRRangeTest(start_lr=1e-4, end_lr=1.0, num_iter=8, diverge_th=None, skip_begin=1)
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    trainer = Trainer(**{**trainer_kwargs, "logger": logger, "limit_train_batches": 1},
                      callbacks=[counter, before, finder, after])
    trainer.fit(make_model(), datamodule=make_data())
    assert_identical(before.state, after.state, "state")
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
        "--trainer.num_sanity_val_steps=0",  # the bar and summary are off to keep the probed output short
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]


def test_suggestion_survives_with_a_cli_built_optimizer_and_a_resumed_run_keeps_it(tmp_path, monkeypatch, make_probe):
    """Lightning #21030/#16787: its finder writes `model.lr`, which an optimizer built by LightningCLI never reads,
    and restores the checkpoint over it. Here the LR of the first batch is the suggestion, the epoch scheduler
    (quickstart's cosine, T_max 20) continues from it, and a resumed run keeps result and LR without re-testing."""
    from lit_cv.cli import LitCVCLI

    cli = LitCVCLI(args=_cli_args(tmp_path, "--trainer.max_epochs=1"), run=False)
    finder = next(c for c in cli.trainer.callbacks if isinstance(c, LRRangeTest))
    probe = make_probe()
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

    monkeypatch.setattr(callback_module, "run_lr_range_test", must_not_run)
    resumed = LitCVCLI(args=_cli_args(tmp_path, "--trainer.max_epochs=2"), run=False)
    resumed_finder = next(c for c in resumed.trainer.callbacks if isinstance(c, LRRangeTest))
    resumed_probe = make_probe()
    resumed.trainer.callbacks.append(resumed_probe)
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(run_dir / "checkpoints" / "last.ckpt"))
    assert resumed_finder.result.suggestion == top and resumed_finder.result.lrs == finder.result.lrs
    cosine_epoch_1 = top * (1 + math.cos(math.pi * 1 / 20)) / 2
    assert resumed_probe.lrs == pytest.approx([cosine_epoch_1], rel=1e-12)


def test_too_short_curve_warns_and_training_goes_on(trainer_kwargs, make_model, make_data, make_probe, tmp_path):
    probe = make_probe()
    finder = LRRangeTest(num_iter=4, apply=True)  # 5 points, skip_begin 10: no suggestion possible
    with pytest.warns(UserWarning, match="Raise num_iter"), pytest.warns(UserWarning, match="no suggestion to apply"):
        Trainer(**{**trainer_kwargs, "limit_train_batches": 1}, callbacks=[finder, probe]).fit(
            make_model(), datamodule=make_data()
        )
    assert finder.result.suggestion is None and len(finder.result.lrs) == 5
    assert probe.lrs == [1e-3]  # Classifier's default Adam LR, untouched
    assert json.loads((tmp_path / "lr_range_test.json").read_text())["suggestion"] is None


def test_multi_process_ddp_is_refused_at_fit_start():
    finder = LRRangeTest()
    trainer = SimpleNamespace(fast_dev_run=False, world_size=4, optimizers=[object()])
    with pytest.raises(ValueError, match=r"world_size=4 \(multi-process DDP\)"):
        finder.on_fit_start(trainer, SimpleNamespace(automatic_optimization=True))


def test_fast_dev_run_skips_the_test(trainer_kwargs, make_model, make_data):
    finder = LRRangeTest(num_iter=5)
    with pytest.warns(UserWarning, match="fast_dev_run"):
        Trainer(**{**trainer_kwargs, "fast_dev_run": True}, callbacks=[finder]).fit(
            make_model(), datamodule=make_data()
        )
    assert finder.result is None


def test_state_dict_round_trip():
    finder = LRRangeTest()
    lrs = lr_sequence(1e-4, 1.0, 20)
    finder.result = LRRangeTestResult.from_curve(lrs, [2.0 - 0.05 * i for i in range(21)], finder.params)
    state = copy.deepcopy(finder.state_dict())
    other = LRRangeTest()
    other.load_state_dict(state)
    assert other.result == finder.result
    other.load_state_dict({})  # older checkpoints without the keys
    assert other.result is None and other.applied == ""
    assert LRRangeTest(num_iter=5).state_key != LRRangeTest(num_iter=6).state_key
    # The key names the method: it is the default, valley, since results/lr_stability.md. A checkpoint written while
    # steepest was the default resumes its result with `method: steepest` given; every other key is unchanged.
    assert LRRangeTest().state_key == (
        "LRRangeTest{'start_lr': 1e-06, 'end_lr': 1.0, 'num_iter': 100, 'step_mode': 'exp', 'method': 'valley'}"
    )
    assert LRRangeTest(method="steepest").state_key == (
        "LRRangeTest{'start_lr': 1e-06, 'end_lr': 1.0, 'num_iter': 100, 'step_mode': 'exp', 'method': 'steepest'}"
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "fastest"}, r"method must be one of \('steepest', 'valley', 'minimum'\), got 'fastest'"),
        ({"step_mode": "log"}, r"step_mode must be one of \('exp', 'linear'\), got 'log'"),
        ({"bound_ratio": 0.5}, "bound_ratio .* must be > 1, got 0.5"),
        ({"filename": "runs/lr"}, "filename must be a plain file stem"),
        ({"start_lrr": 1e-5}, "unexpected keyword argument 'start_lrr'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LRRangeTest(**kwargs)
