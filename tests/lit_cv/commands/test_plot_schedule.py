"""``lit-cv plot-schedule``: every schedule config composes with an experiment and plots without training."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from datamodules import DigitsDataModule
from lit_cv.cli import main as lit_cv_main

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
SCHEDULE_CONFIGS = sorted((REPO / "configs" / "schedules").glob("*.yaml"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_every_schedule_kind_has_a_config():
    names = {p.stem for p in SCHEDULE_CONFIGS}
    assert {
        "cyclic_triangular",
        "cyclic_triangular2",
        "cyclic_exp_range",
        "cosine_warm_restarts",
        "step",
        "multistep",
        "plateau",
        "step_decay",
    } <= names


@pytest.mark.parametrize("config", SCHEDULE_CONFIGS, ids=lambda p: p.stem)
def test_schedule_config_composes_and_plots(config, tmp_path, capsys):
    epochs, steps = 16, 3  # multistep's milestones are 10 and 15
    png = tmp_path / "schedule.png"
    code = lit_cv_main(
        [
            "plot-schedule",
            "--config",
            QUICKSTART,
            "--config",
            str(config),
            "--trainer.max_epochs",
            str(epochs),
            "--steps-per-epoch",
            str(steps),
            "--output",
            str(png),
        ]
    )
    assert code == 0
    assert _is_png(png)
    assert f"Schedule plot: {png}" in capsys.readouterr().out
    rows = _read_csv(png.with_suffix(".csv"))
    assert [int(r["step"]) for r in rows] == list(range(epochs * steps))
    assert [int(r["epoch"]) for r in rows] == [s // steps for s in range(epochs * steps)]
    lrs = [float(r["lr"]) for r in rows]
    assert all(lr > 0 for lr in lrs) and len(set(lrs)) > 1  # a schedule, not a constant
    if config.stem == "step_decay":  # the course's sequence, optimizer lr overridden to 0.001 by the block
        assert lrs[::steps] == pytest.approx([0.001 * 0.8 ** (e // 3) for e in range(epochs)], rel=1e-12)
    if config.stem == "cosine_warm_restarts":  # T_0 = 2 epochs, T_mult 2: restarts after 2, 6, 14 epochs
        restarts = [k for k in range(1, len(lrs)) if lrs[k] > lrs[k - 1]]
        assert restarts == [2 * steps + 1, 6 * steps + 1, 14 * steps + 1]  # +1: stepped after each batch
        assert max(lrs) == pytest.approx(0.002)  # eta_max: the quickstart's Adam lr


def test_batches_per_epoch_come_from_the_datamodule(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dm = DigitsDataModule(batch_size=32, image_size=28)
    dm.setup("fit")
    expected_steps = int(len(dm.train_dataloader()) * 0.5)  # limit_train_batches 0.5
    code = lit_cv_main(
        [
            "plot-schedule",
            "--config",
            QUICKSTART,
            "--trainer.max_epochs",
            "3",
            "--trainer.limit_train_batches",
            "0.5",
        ]
    )
    assert code == 0
    png = tmp_path / "runs" / "quickstart" / "schedule.png"  # default: beside the run's versions
    assert _is_png(png)
    assert f"3 epochs x {expected_steps} batches" in capsys.readouterr().out
    rows = _read_csv(png.with_suffix(".csv"))
    assert len(rows) == 3 * expected_steps
    # the quickstart's CosineAnnealingLR(T_max=20), stepped per epoch: constant within an epoch
    lrs = [float(r["lr"]) for r in rows]
    per_epoch = [0.002 * (1 + math.cos(math.pi * e / 20)) / 2 for e in range(3)]
    assert lrs == pytest.approx([lr for lr in per_epoch for _ in range(expected_steps)], rel=1e-9)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        ([], "give the experiment"),
        (["--config", QUICKSTART, "--steps-per-epoch", "0"], "--steps-per-epoch must be >= 1, got 0"),
    ],
)
def test_bad_arguments_say_the_fix(argv, match, capsys):
    with pytest.raises(SystemExit):
        lit_cv_main(["plot-schedule", *argv])
    assert match in capsys.readouterr().err


def _refused(tmp_path, capsys, *args: str) -> str:
    """Run plot-schedule on the quickstart plus ``args``, 3 epochs x 4 batches; the error it exits with."""
    png = tmp_path / "s.png"
    argv = ["--config", QUICKSTART, *args, "--trainer.max_epochs", "3", "--steps-per-epoch", "4"]
    with pytest.raises(SystemExit):
        lit_cv_main(["plot-schedule", *argv, "--output", str(png)])
    assert not png.exists()
    return capsys.readouterr().err


def test_a_schedule_that_would_fail_during_fit_fails_here(tmp_path, capsys):
    one_cycle = tmp_path / "one_cycle.yaml"
    one_cycle.write_text(
        "model:\n"
        "  lr_scheduler:\n"
        "    class_path: torch.optim.lr_scheduler.OneCycleLR\n"
        "    init_args: {max_lr: 0.01, total_steps: 10}\n"
        "  scheduler_interval: step\n"
    )
    err = _refused(tmp_path, capsys, "--config", str(one_cycle))
    assert "fails within 3 epochs x 4 batches" in err and "total steps is 10" in err


def test_cyclic_momentum_cycling_on_adam_is_refused_with_the_fix(tmp_path, capsys):
    cyclic = str(REPO / "configs" / "schedules" / "cyclic_triangular.yaml")
    err = _refused(tmp_path, capsys, "--config", cyclic, "--model.lr_scheduler.init_args.cycle_momentum", "true")
    assert "torch.optim.Adam has no `momentum`" in err and "set `cycle_momentum: false`" in err
