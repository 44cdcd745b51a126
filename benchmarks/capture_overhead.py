"""Step-time overhead of :class:`callbacks.GradientCapture` (goal: < 5% when capturing every 50 steps).

    python benchmarks/capture_overhead.py [--steps 400] [--repeats 3] [--every 50] [--n-feature 32]
        [--threads N] [--out FILE]

Trains the quickstart model (CNN2 on the bundled digits, 28x28, batch 32, TensorBoard logger) for ``--steps``
optimizer steps without and with ``GradientCapture(every_n_steps=--every)`` (all layers, histograms on: the
defaults), alternating the two in one process ``--repeats`` times so machine load hits both alike. A step is
``on_train_batch_start`` -> ``on_train_batch_end`` (forward, backward, optimizer step and the capture hooks);
the first ``--warmup`` steps of each run are dropped. The overhead is the ratio of the mean step times, using
each configuration's fastest run (the least disturbed by other processes); the median-run ratio is printed
too.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.gradient_capture import GradientCapture
from datamodules.digits import DigitsDataModule
from lit_cv.classifier import Classifier
from lit_cv.nets import CNN2

GOAL = 5.0  # percent


class StepTimer(Callback):
    """Wall time of every training step, keyed by the global step it started at."""

    def __init__(self) -> None:
        self.times: list[tuple[int, float]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.times.append((trainer.global_step - 1, time.perf_counter() - self._start))


def run(steps: int, n_feature: int, every: int | None, log_dir: str) -> list[tuple[int, float]]:
    seed_everything(13, verbose=False)
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    if every is not None:
        callbacks.append(GradientCapture(every_n_steps=every))
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=TensorBoardLogger(log_dir, name="capture" if every else "baseline"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=50,
    )
    model = Classifier(
        CNN2(n_feature=n_feature, in_channels=1, num_classes=10, image_size=28), num_classes=10
    )
    trainer.fit(model, DigitsDataModule(batch_size=32, image_size=28))
    return timer.times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--n-feature", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    runs: dict[str, list[list[tuple[int, float]]]] = {"baseline": [], "capture": []}
    with tempfile.TemporaryDirectory(prefix="capture_overhead_") as log_dir:
        for repeat in range(args.repeats):
            order = ["baseline", "capture"] if repeat % 2 == 0 else ["capture", "baseline"]
            for name in order:
                times = run(args.steps, args.n_feature, args.every if name == "capture" else None, log_dir)
                runs[name].append([t for t in times if t[0] >= args.warmup])

    def mean_ms(times: list[tuple[int, float]]) -> float:
        return 1000 * statistics.fmean(t for _, t in times)

    summary: dict[str, Any] = {}
    for name, all_times in runs.items():
        means = [mean_ms(times) for times in all_times]
        summary[name] = {
            "mean_step_ms_per_run": means,
            "best_ms": min(means),
            "median_ms": statistics.median(means),
        }
    capture_steps = [t for times in runs["capture"] for s, t in times if s % args.every == 0]
    other_steps = [t for times in runs["capture"] for s, t in times if s % args.every != 0]
    overhead_best = 100 * (summary["capture"]["best_ms"] / summary["baseline"]["best_ms"] - 1)
    overhead_median = 100 * (summary["capture"]["median_ms"] / summary["baseline"]["median_ms"] - 1)
    result = {
        "command": "python benchmarks/capture_overhead.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "steps": args.steps,
        "repeats": args.repeats,
        "every_n_steps": args.every,
        "n_feature": args.n_feature,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        **summary,
        "capture_step_ms": 1000 * statistics.median(capture_steps) if capture_steps else None,
        "other_step_ms": 1000 * statistics.median(other_steps),
        "overhead_percent_best": overhead_best,
        "overhead_percent_median": overhead_median,
    }
    print(
        f"\nGradientCapture(every_n_steps={args.every}) overhead: CNN2(n_feature={args.n_feature}) on digits "
        f"28x28, batch 32, {args.steps} steps x {args.repeats} runs each, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"{'':>10} {'best run':>10} {'median run':>11}   mean step time per run (ms)")
    for name in ("baseline", "capture"):
        row = summary[name]
        per_run = ", ".join(f"{m:.2f}" for m in row["mean_step_ms_per_run"])
        print(f"{name:>10} {row['best_ms']:>8.2f}ms {row['median_ms']:>9.2f}ms   [{per_run}]")
    print(
        f"overhead {overhead_best:+.2f}% (best runs), {overhead_median:+.2f}% (median runs), goal < {GOAL}%"
    )
    if capture_steps:
        capture_ms, other_ms = result["capture_step_ms"], result["other_step_ms"]
        print(
            f"median capture step {capture_ms:.1f} ms vs {other_ms:.2f} ms otherwise: one capture costs "
            f"~{capture_ms - other_ms:.1f} ms, amortised over {args.every} steps"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
