"""``lit-cv lr-find --config X.yaml``: the LR range test on an experiment config, without training.

Builds the model, datamodule and trainer exactly as ``lit-cv fit`` would (``LitCVCLI(run=False)``, so every
``--model.*``/``--data.*``/``--trainer.*`` override works), runs ``callbacks.LRRangeTest`` at fit start and stops.
Prints the suggested LR (all three methods), writes ``lr_range_test.png`` and ``lr_range_test.json`` to the run
directory (and to ``--output-dir`` if given). Exit code 0 with a suggestion, 1 when the curve was too short for one.
The range-test options are the fields of ``callbacks.lr_range_test.LRRangeTestParams``.

Example::

    lit-cv lr-find --config configs/quickstart.yaml --num-iter 100 --end-lr 1 --method valley
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from callbacks.lr_range_test import LRRangeTest, LRRangeTestParams, write_report
from lit_cv.commands import build_experiment, parse_experiment


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "off") else float(text)


_PARSE = {float: float, int: int, str: str, float | None: _optional_float}  # field type -> argparse `type`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-cv lr-find",
        description="LR range test (Leslie Smith) on a lit-cv config. Any other argument (--config X.yaml, "
        "--model.*, --data.*, --trainer.*) is passed to the lit-cv CLI unchanged.",
        allow_abbrev=False,
    )
    hints = typing.get_type_hints(LRRangeTestParams)
    for field in dataclasses.fields(LRRangeTestParams):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=_PARSE[hints[field.name]],
            default=field.default,
            choices=field.metadata.get("choices"),
            help=f"{field.metadata['help']} (default {field.default})",
        )
    parser.add_argument("--output-dir", type=Path, default=None, help="also write the PNG and JSON here")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    options, cli_args = parse_experiment(parser, argv, "lr-find")
    params = {field.name: getattr(options, field.name) for field in dataclasses.fields(LRRangeTestParams)}
    try:
        finder = LRRangeTest(exit_after=True, **params)
    except ValueError as error:
        parser.error(str(error))
    cli = build_experiment(cli_args)
    cli.trainer.callbacks.append(finder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    result = finder.result
    if result is None:
        print("lr-find: the range test did not run (is trainer.fast_dev_run set?).")
        return 1
    if options.output_dir is not None and cli.trainer.is_global_zero:
        finder.paths = write_report(result, options.output_dir, finder.filename)
    print(f"lr-find: {len(result.lrs)} LRs from {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}"
          + (" (stopped early: loss diverged)" if result.stopped_early else ""))
    for method, lr in result.suggestions.items():
        print(f"  {method:9s} {'-' if lr is None else f'{lr:.4g}'}")
    for kind, path in finder.paths.items():
        print(f"  {kind}: {path}")
    if result.suggestion is None:
        print(f"lr-find: {result.message}")
        return 1
    print(f"lr-find: suggested LR {result.suggestion:.4g} ({result.method}); to use it set "
          f"`model.optimizer.init_args.lr: {result.suggestion:.3g}` or add callbacks.LRRangeTest with apply: true.")
    return 0
