"""Frozen means fast: head epochs on cached backbone features (``callbacks.FeatureCache``) vs running the frozen
backbone every epoch, side by side in one run.

The same config (default ``configs/cats_dogs_lite0_head.yaml``), built as ``lit-cv fit`` builds it and seeded alike,
is fitted once with the cache and once without, in interleaved rounds (cached, plain, cached, plain, ...) so a load
change on the machine hits both alike. An epoch is training plus validation. Reports the seconds per epoch of
each, the one-time feature extraction, the speedup, and both runs' validation accuracy (equal at the same seed)::

    .venv/bin/python benchmarks/feature_cache.py --data-dir ../shared/data/cats_dogs --epochs 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning.pytorch import Callback, Trainer, seed_everything

from callbacks.feature_cache import FeatureCache

SHARED = Path(os.environ.get("LIT_CV_SHARED_DATA", REPO.parent / "shared" / "data"))
CONFIG = REPO / "configs" / "cats_dogs_lite0_head.yaml"


class EpochTimer(Callback):
    """Wall seconds of every epoch (training and validation) and of the fit start (the feature extraction)."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.fit_start = 0.0

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        self._setup = time.perf_counter()

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.fit_start = time.perf_counter() - self._setup  # setup, FeatureCache, sanity check

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:  # after the epoch's validation
        self.epochs.append(time.perf_counter() - self._start)


def run(config: Path, data_dir: Path, epochs: int, cached: bool) -> dict[str, Any]:
    """One fit of ``config`` on ``data_dir``, with or without the feature cache."""
    from lit_cv.cli import SEED, LitCVCLI

    args = ["--config", str(config), "--data.init_args.data_dir", str(data_dir)]
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        cli = LitCVCLI(args=args, run=False)  # seeds, then builds the net and the data exactly as `lit-cv fit`
    timer = EpochTimer()
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[timer, *([FeatureCache()] if cached else [])])
    seed_everything(SEED)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    return {"epoch_seconds": timer.epochs, "fit_start_seconds": timer.fit_start,
            "val_acc": float(trainer.callback_metrics["val/acc"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--data-dir", type=Path, default=SHARED / "cats_dogs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    runs: dict[str, list[dict[str, Any]]] = {"cached": [], "backbone": []}
    for round_ in range(args.rounds):
        for name, results in list(runs.items())[:: 1 if round_ % 2 == 0 else -1]:  # alternate who goes first
            result = run(args.config, args.data_dir, args.epochs, cached=name == "cached")
            results.append(result)
            print(f"round {round_ + 1} {name:>8}: epochs {[round(s, 2) for s in result['epoch_seconds']]} s, "
                  f"fit start {result['fit_start_seconds']:.1f} s, val/acc {result['val_acc']:.4f}", flush=True)
    summary: dict[str, Any] = {"config": str(args.config.relative_to(REPO)) if args.config.is_relative_to(REPO)
                               else str(args.config), "epochs": args.epochs, "rounds": args.rounds}
    for name, results in runs.items():
        summary[name] = {
            "median_epoch_seconds": statistics.median(s for r in results for s in r["epoch_seconds"]),
            "median_fit_start_seconds": statistics.median(r["fit_start_seconds"] for r in results),
            "val_acc": [r["val_acc"] for r in results],
        }
    summary["speedup_per_epoch"] = summary["backbone"]["median_epoch_seconds"] / summary["cached"][
        "median_epoch_seconds"]
    summary["same_val_acc"] = len(set(summary["cached"]["val_acc"] + summary["backbone"]["val_acc"])) == 1
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({**summary, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
