"""Step-time overhead of :class:`callbacks.GradientCapture` (goal: < 5% when capturing every 50 steps).

    python benchmarks/capture_overhead.py [--steps 200] [--repeats 6] [--every 50] [--n-feature 32]
        [--threads N] [--out FILE]

Trains the quickstart model (CNN2 on the bundled digits) without and with ``GradientCapture(every_n_steps=--every)``,
back to back, ``--repeats`` times in one process, and prints the capture hooks' share of the step time and the A/B
ratio of mean step times (see :func:`main`).
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
    """Wall time of every training step, keyed by the global step it ran."""

    def __init__(self) -> None:
        self.times: list[tuple[int, float]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.times.append((trainer.global_step - 1, time.perf_counter() - self._start))


class TimedGradientCapture(GradientCapture):
    """GradientCapture that adds up the wall time spent in its two per-step hooks, per global step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spent: dict[int, float] = {}

    def on_before_optimizer_step(self, trainer: Trainer, *args: Any) -> None:
        start = time.perf_counter()
        super().on_before_optimizer_step(trainer, *args)
        self.spent[trainer.global_step] = (
            self.spent.get(trainer.global_step, 0.0) + time.perf_counter() - start
        )

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        start, step = time.perf_counter(), self._pending_step
        super()._after_optimizer_step(optimizer, args, kwargs)
        if step is not None:
            self.spent[step] = self.spent.get(step, 0.0) + time.perf_counter() - start


def run(steps: int, n_feature: int, every: int | None, log_dir: str) -> tuple[list[tuple[int, float]], dict]:
    seed_everything(13, verbose=False)
    timer = StepTimer()
    capture = TimedGradientCapture(every_n_steps=every) if every is not None else None
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=TensorBoardLogger(log_dir, name="capture" if every else "baseline"),
        callbacks=[timer] + ([capture] if capture else []),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=50,
    )
    net = CNN2(n_feature=n_feature, in_channels=1, num_classes=10, image_size=28)
    trainer.fit(Classifier(net, num_classes=10), DigitsDataModule(batch_size=32, image_size=28))
    return timer.times, (capture.spent if capture else {})


def main(argv: list[str] | None = None) -> int:
    """Measure and print both figures; ``--out`` also writes them as JSON.

    A step is ``on_train_batch_start`` -> ``on_train_batch_end`` (forward, backward, optimizer step and the capture
    hooks). The first ``--every`` steps of each run are a warm-up (step 0 is a capture step); the next ``--steps``
    are measured, so the window holds exactly ``steps / every`` captures. The two runs of a pair alternate which
    goes first.

    - **in-run share** (robust on a shared machine): the time spent inside the capture's hooks (timed around
      ``on_before_optimizer_step`` and the optimizer post-step hook) divided by the rest of the step time of the
      same runs, so background load slows both sides alike;
    - **A/B**: ratio of the mean step time with and without the callback: the median over the back-to-back pairs,
      and the ratio of each configuration's fastest run. Only meaningful on a quiet machine: other processes move
      single runs by tens of percent.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps", type=int, default=200, help="measured steps per run (a multiple of --every)"
    )
    parser.add_argument("--repeats", type=int, default=6, help="pairs of runs (without, with the callback)")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--n-feature", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.steps % args.every:
        parser.error(f"--steps {args.steps} must be a multiple of --every {args.every}")
    # steps [0, every) warm up (step 0 is a capture step); the measured window holds steps / every captures
    warmup = args.every
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    step_times: dict[str, list[list[tuple[int, float]]]] = {"baseline": [], "capture": []}
    spent: list[dict[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="capture_overhead_") as log_dir:
        for repeat in range(args.repeats):
            for name in ["baseline", "capture"] if repeat % 2 == 0 else ["capture", "baseline"]:
                every = args.every if name == "capture" else None
                times, hook_time = run(warmup + args.steps, args.n_feature, every, log_dir)
                step_times[name].append([t for t in times if t[0] >= warmup])
                if name == "capture":
                    spent.append({s: t for s, t in hook_time.items() if s >= warmup})

    # in-run share: hook time / (step time - hook time), over all capture runs
    total_steps = sum(t for times in step_times["capture"] for _, t in times)
    total_hooks = sum(sum(run_spent.values()) for run_spent in spent)
    share = 100 * total_hooks / (total_steps - total_hooks)
    capture_ms = [1000 * t for run_spent in spent for s, t in run_spent.items() if s % args.every == 0]
    idle_ms = [1000 * t for run_spent in spent for s, t in run_spent.items() if s % args.every != 0]

    # A/B
    means = {
        name: [1000 * statistics.fmean(t for _, t in times) for times in runs]
        for name, runs in step_times.items()
    }
    best = {name: min(values) for name, values in means.items()}
    ab_best = 100 * (best["capture"] / best["baseline"] - 1)
    # each repeat ran the two back to back: the median of the pairwise ratios cancels slow drifts in load
    pair_ratios = [100 * (c / b - 1) for b, c in zip(means["baseline"], means["capture"])]
    ab_pairs = statistics.median(pair_ratios)

    result = {
        "command": "python benchmarks/capture_overhead.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "steps": args.steps,
        "repeats": args.repeats,
        "every_n_steps": args.every,
        "n_feature": args.n_feature,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "in_run_share_percent": share,
        "hook_ms_per_capture_step": statistics.median(capture_ms),
        "hook_ms_per_other_step": statistics.median(idle_ms),
        "step_ms_with_capture": 1000 * total_steps / sum(len(times) for times in step_times["capture"]),
        "mean_step_ms_per_run": means,
        "ab_percent_per_pair": pair_ratios,
        "ab_percent_median_pair": ab_pairs,
        "ab_percent_best_runs": ab_best,
    }
    print(
        f"\nGradientCapture(every_n_steps={args.every}): CNN2(n_feature={args.n_feature}) on digits 28x28, "
        f"batch 32, {args.steps} measured steps x {args.repeats} runs per configuration, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(
        f"in-run share: {share:.2f}% of step time (goal < {GOAL}%): "
        f"{result['hook_ms_per_capture_step']:.1f} ms per capture step, "
        f"{1000 * result['hook_ms_per_other_step']:.1f} us on other steps, mean step "
        f"{result['step_ms_with_capture']:.1f} ms"
    )
    for name in ("baseline", "capture"):
        per_run = ", ".join(f"{m:.1f}" for m in means[name])
        print(f"A/B {name:>8}: mean step per run [{per_run}] ms")
    pairs = ", ".join(f"{r:+.1f}" for r in pair_ratios)
    print(
        f"A/B overhead: median pair {ab_pairs:+.1f}% (pairs: {pairs}), best runs {ab_best:+.1f}%; "
        "noisy when other processes share the CPU"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
