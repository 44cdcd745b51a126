"""Extra ``lit-cv`` commands beside LightningCLI's fit/validate/test/predict (see ``lit_cv.cli.EXTRA_COMMANDS``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lit_cv.cli import LitCVCLI


def parse_experiment(parser: argparse.ArgumentParser, argv: list[str], command: str) -> tuple[argparse.Namespace,
                                                                                             list[str]]:
    """The command's own options, and the rest: the experiment's LightningCLI arguments (``--config X.yaml ...``).

    Exits with a usage error when no experiment is given.
    """
    options, cli_args = parser.parse_known_args(argv)
    if not cli_args:
        parser.error(f"give the experiment, e.g. `lit-cv {command} --config configs/quickstart.yaml`.")
    return options, cli_args


def build_experiment(cli_args: list[str]) -> LitCVCLI:
    """The experiment's model, datamodule and trainer, built by ``LitCVCLI`` exactly as ``lit-cv fit`` would."""
    from lit_cv.cli import LitCVCLI

    return LitCVCLI(args=cli_args, run=False)
