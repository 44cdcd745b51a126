"""``lit-cv lr-find --config X.yaml``: the LR range test on an experiment config, without training.

Builds the model, datamodule and trainer exactly as ``lit-cv fit`` would (``LitCVCLI(run=False)``, so every
``--model.*``/``--data.*``/``--trainer.*`` override works), runs ``callbacks.LRRangeTest`` at fit start and stops.
Prints the suggested LR (all three methods), writes ``lr_range_test.png`` and ``lr_range_test.json`` to the run
directory (and to ``--output-dir`` if given). Exit code 0 with a suggestion, 1 when the curve was too short for one.

Example::

    lit-cv lr-find --config configs/quickstart.yaml --num-iter 100 --end-lr 1 --method valley
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lit_cv.lr_range_test import SUPPORTED_METHODS, SUPPORTED_STEP_MODES


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "off") else float(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-cv lr-find",
        description="LR range test (Leslie Smith) on a lit-cv config. Any other argument (--config X.yaml, "
        "--model.*, --data.*, --trainer.*) is passed to the lit-cv CLI unchanged.",
        allow_abbrev=False,
    )
    parser.add_argument("--start-lr", type=float, default=1e-6, help="first LR tested (default 1e-6)")
    parser.add_argument("--end-lr", type=float, default=1.0, help="last LR tested (default 1)")
    parser.add_argument("--num-iter", type=int, default=100, help="LR increases; trains num_iter+1 batches at most")
    parser.add_argument("--step-mode", choices=SUPPORTED_STEP_MODES, default="exp", help="LR growth (default exp)")
    parser.add_argument("--smoothing", type=float, default=0.05, help="weight of the newest loss (1 = raw loss)")
    parser.add_argument("--diverge-th", type=_optional_float, default=5.0,
                        help="stop when smoothed loss > this x best (default 5; 'none' never stops)")
    parser.add_argument("--val-batches", type=int, default=0,
                        help="0: training loss; N: mean loss on the first N validation batches after each step")
    parser.add_argument("--method", choices=SUPPORTED_METHODS, default="steepest", help="suggestion (default steepest)")
    parser.add_argument("--skip-begin", type=int, default=10, help="points ignored at the start when suggesting")
    parser.add_argument("--skip-end", type=int, default=1, help="points ignored at the end (0 keeps all)")
    parser.add_argument("--output-dir", type=Path, default=None, help="also write the PNG and JSON here")
    return parser


def main(argv: list[str]) -> int:
    from callbacks.lr_range_test import LRRangeTest
    from lit_cv.cli import LitCVCLI

    parser = build_parser()
    options, cli_args = parser.parse_known_args(argv)
    if not cli_args:
        parser.error("give the experiment, e.g. `lit-cv lr-find --config configs/quickstart.yaml`.")
    finder = LRRangeTest(
        start_lr=options.start_lr,
        end_lr=options.end_lr,
        num_iter=options.num_iter,
        step_mode=options.step_mode,
        smoothing=options.smoothing,
        diverge_th=options.diverge_th,
        val_batches=options.val_batches,
        method=options.method,
        skip_begin=options.skip_begin,
        skip_end=options.skip_end,
        exit_after=True,
    )
    cli = LitCVCLI(args=cli_args, run=False)
    cli.trainer.callbacks.append(finder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    result = finder.result
    if result is None:
        print("lr-find: the range test did not run (is trainer.fast_dev_run set?).")
        return 1
    if options.output_dir is not None and cli.trainer.is_global_zero:
        finder.paths = {
            "json": result.save_json(options.output_dir / f"{finder.filename}.json"),
            "png": result.save_png(options.output_dir / f"{finder.filename}.png"),
        }
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
