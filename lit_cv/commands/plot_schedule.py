"""``lit-cv plot-schedule --config X.yaml``: the learning rate of every training batch, before any training.

Builds the model, datamodule and trainer as ``lit-cv fit`` would (``LitCVCLI(run=False)``, so a second
``--config configs/schedules/NAME.yaml`` and every ``--model.*``/``--trainer.*`` override works), lets
Lightning step the configured schedule through a ``fit`` that trains nothing
(:func:`lit_cv.schedules.preview_schedule`) and writes ``schedule.png`` (LR vs step, epoch boundaries dotted)
and ``schedule.csv`` (step, epoch, lr) to ``runs/<name>/`` (or ``--output``). ReduceLROnPlateau is drawn for a
metric that never improves: the earliest reductions it can make.

Example::

    lit-cv plot-schedule --config configs/quickstart.yaml --config configs/schedules/cosine_warm_restarts.yaml
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from callbacks.figures import figure
from lit_cv.commands import build_experiment, parse_experiment
from lit_cv.schedules import preview_schedule

MAX_EPOCH_LINES = 100  # more epoch boundaries than this are thinned out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-cv plot-schedule",
        description="Plot the learning-rate schedule of a lit-cv config without training. Any other argument "
        "(--config X.yaml, --model.*, --data.*, --trainer.*) is passed to the lit-cv CLI unchanged.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="training batches per epoch (default: from the datamodule and limit_train_batches)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="PNG path (default runs/<logger name>/schedule.png); the CSV goes beside it",
    )
    parser.add_argument("--log-y", action="store_true", help="log-scale LR axis")
    return parser


def batches_per_epoch(trainer: Trainer, datamodule: LightningDataModule | None) -> int:
    """Training batches per epoch and device, before ``limit_train_batches`` (which the preview applies).

    Raises:
        ValueError: without a datamodule, or with a train dataloader that has no length.
    """
    if datamodule is None:
        raise ValueError(
            "The config has no `data:` block; give the batches per epoch with --steps-per-epoch N."
        )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    try:
        length = len(loader)
    except TypeError as err:
        raise ValueError(
            f"The train dataloader of {type(datamodule).__name__} has no length; give --steps-per-epoch N."
        ) from err
    world_size = max(int(trainer.world_size), 1)
    return math.ceil(length / world_size)  # a DistributedSampler splits the data across devices


def default_output(trainer: Trainer) -> Path:
    logger = trainer.logger
    if logger is not None and getattr(logger, "save_dir", None) and getattr(logger, "name", None):
        return Path(logger.save_dir) / str(logger.name) / "schedule.png"
    return Path(trainer.default_root_dir) / "schedule.png"


def describe(configs: list[Any]) -> str:
    if not configs:
        return "no scheduler (constant lr)"
    parts = []
    for config in configs:
        every = (
            f"every {config.frequency} {config.interval}s"
            if config.frequency > 1
            else f"every {config.interval}"
        )
        note = ", metric never improving" if config.reduce_on_plateau else ""
        parts.append(f"{type(config.scheduler).__name__} ({every}{note})")
    return " + ".join(parts)


def plot(lrs: list[float], steps_per_epoch: int, title: str, path: Path, log_y: bool = False) -> Path:
    """LR vs training step with dotted epoch boundaries, saved as a PNG at ``path``."""
    epochs = math.ceil(len(lrs) / steps_per_epoch)
    stride = max(1, math.ceil(epochs / MAX_EPOCH_LINES))
    with figure(path, dpi=100, figsize=(10, 4)) as (fig, ax):
        for epoch in range(stride, epochs, stride):
            ax.axvline(epoch * steps_per_epoch, color="0.75", linestyle=":", linewidth=0.8)
        ax.plot(range(len(lrs)), lrs, color="tab:blue", linewidth=1.2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(
            f"step (training batch); dotted: epoch boundaries ({steps_per_epoch} batches per epoch)"
        )
        ax.set_ylabel("learning rate")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, max(len(lrs) - 1, 1))
        fig.tight_layout()
    return path


def write_csv(lrs: list[float], steps_per_epoch: int, path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "epoch", "lr"])
        for step, lr in enumerate(lrs):
            writer.writerow([step, step // steps_per_epoch, repr(lr)])
    return path


def main(argv: list[str]) -> int:
    parser = build_parser()
    options, cli_args = parse_experiment(parser, argv, "plot-schedule")
    if options.steps_per_epoch is not None and options.steps_per_epoch < 1:
        parser.error(f"--steps-per-epoch must be >= 1, got {options.steps_per_epoch}.")
    cli = build_experiment(cli_args)
    trainer = cli.trainer
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 1:
        parser.error(f"trainer.max_epochs is {max_epochs}; set it, e.g. --trainer.max_epochs 20.")
    if options.steps_per_epoch is not None:  # given: exactly this many batches per epoch
        batches, limit = options.steps_per_epoch, None
    else:
        try:
            batches, limit = batches_per_epoch(trainer, cli.datamodule), trainer.limit_train_batches
        except ValueError as err:
            parser.error(str(err))
    try:  # what would fail during fit fails here, before any training (OneCycleLR total_steps too small, ...)
        preview = preview_schedule(
            cli.model,
            max_epochs=max_epochs,
            batches_per_epoch=batches,
            limit_train_batches=limit,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
        )
    except (ValueError, MisconfigurationException) as err:
        parser.error(f"the schedule fails within {max_epochs} epochs x {batches} batches: {err}")
    lrs, steps = preview.lrs, preview.batches_per_epoch
    title = (
        f"{type(preview.optimizer).__name__} + {describe(preview.lr_scheduler_configs)}: "
        f"{max_epochs} epochs x {steps} batches"
    )
    png = plot(lrs, steps, title, options.output or default_output(trainer), log_y=options.log_y)
    table = write_csv(lrs, steps, png.with_suffix(".csv"))
    print(f"{title}\nlr: first {lrs[0]:.6g}, min {min(lrs):.6g}, max {max(lrs):.6g}, last {lrs[-1]:.6g}")
    print(f"Schedule plot: {png}\nSchedule table: {table}")
    return 0
