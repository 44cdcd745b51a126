"""The ``lit-cv`` command: LightningCLI wired with lit-cv's model, callbacks and defaults, plus extra commands.

``lit-cv fit|validate|test|predict --config X.yaml`` are LightningCLI subcommands; the extra commands in
``EXTRA_COMMANDS`` (dataset download, LR range test, schedule plot, ...) are dispatched before LightningCLI parses.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks.metrics_report import MetricsReport
from callbacks.model_checkpoint import ModelCheckpoint
from callbacks.prediction_writer import PredictionWriter
from callbacks.rng_state import RNGState
from callbacks.slurm_requeue import SLURMRequeue, num_nodes_from_env
from lit_cv.classifier import Classifier
from lit_cv.resume import reuse_last_version, skip_pretrained_download

SEED = 13
RUNS_DIR = "runs"

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": RUNS_DIR, "name": "default", "default_hp_metric": False},
    },
}

CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "checkpoint.monitor": "val/loss",
    "checkpoint.mode": "min",
    "checkpoint.save_last": True,
    "checkpoint.filename": "best-epoch{epoch:03d}",
    "checkpoint.auto_insert_metric_name": False,
}

# name -> "module:function"; the function takes the remaining argv and returns an exit code (or None).
EXTRA_COMMANDS: dict[str, str] = {
    "download": "lit_cv.commands.download:main",
    "lr-find": "lit_cv.commands.lr_find:main",
    "plot-schedule": "lit_cv.commands.plot_schedule:main",
    "reproduce": "lit_cv.commands.reproduce:main",
}


class LitCVCLI(LightningCLI):
    """LightningCLI for :class:`lit_cv.Classifier` and any datamodule (``data: class_path: ...``).

    Defaults: seed 13; TensorBoard under ``runs/<name>/version_N`` (set ``trainer.logger.init_args.name``);
    ModelCheckpoint on ``val/loss`` plus ``last.ckpt`` (configurable under ``checkpoint:``); LearningRateMonitor
    (``lr_monitor:``); a rich progress bar; ``metrics.json`` + table after fit/validate/test; ``predictions.csv``
    after predict. ``data.num_classes`` and ``data.class_names`` are linked into the model.
    Resume and scale-out: ``fit --ckpt_path last`` continues the newest run in its own version directory
    (:mod:`lit_cv.resume`); RNG states ride along in checkpoints (``RNGState``); under ``srun`` SIGUSR1 checkpoints
    and requeues the job (``SLURMRequeue``) and ``trainer.num_nodes`` defaults to the job's node count.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", {"description": _description()})
        super().__init__(
            model_class=Classifier,
            datamodule_class=LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=SEED,
            trainer_defaults=TRAINER_DEFAULTS,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        # Tabular nets get their input width from the data. jsonargparse skips this link when the datamodule has no
        # `num_features` or the net no `in_features` (image data, image nets), so it is safe for every config.
        parser.link_arguments("data.num_features", "model.net.init_args.in_features", apply_on="instantiate")
        # srun / torchrun jobs: Lightning requires num_nodes to equal the job's node count, so default to it.
        parser.set_defaults({"trainer.num_nodes": num_nodes_from_env()})

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":  # `--ckpt_path last` continues the newest run in its own version directory
            reuse_last_version(self.config["fit"])
        if self.subcommand is not None:
            skip_pretrained_download(self.config[self.subcommand])

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init.get(str(self.subcommand), self.config_init).get("trainer", {})
        callbacks = list(config.get("callbacks") or [])
        callbacks += [MetricsReport(), PredictionWriter(), RNGState(), SLURMRequeue()]
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(RichProgressBar())
        kwargs.setdefault("callbacks", callbacks)
        return super().instantiate_trainer(**kwargs)


def _description() -> str:
    lines = ["lit-cv: classic computer-vision experiments on Lightning.", ""]
    if EXTRA_COMMANDS:
        lines.append("Extra commands (run `lit-cv COMMAND --help`): " + ", ".join(sorted(EXTRA_COMMANDS)))
    return "\n".join(lines)


def _load_command(target: str) -> Callable[[list[str]], Any]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lit-cv`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in EXTRA_COMMANDS:
        # The command parses its own argv; LightningCLI(args=...) inside it must not also see sys.argv.
        saved, sys.argv = sys.argv, sys.argv[:1]
        try:
            code = _load_command(EXTRA_COMMANDS[args[0]])(args[1:])
        finally:
            sys.argv = saved
        return int(code or 0)
    LitCVCLI(args=argv)  # None: LightningCLI reads sys.argv itself (no "args and sys.argv both given" warning)
    return 0


if __name__ == "__main__":
    sys.exit(main())
