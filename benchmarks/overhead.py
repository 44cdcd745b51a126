"""Framework overhead: a steady-state epoch of ``lit-cv fit`` (defaults on) against a plain PyTorch loop.

    python benchmarks/overhead.py [--rounds 3] [--epochs 1 3] [--json FILE] --config configs/rps_cnn2_dropout.yaml \
        --data.init_args.data_dir DIR

Every other argument goes to ``lit-cv fit`` as given (``--config``, ``--model.*``, ``--data.*``, ``--trainer.*``). In
one process, each arm once untimed (first-call costs), then ``--rounds`` times, alternating which goes first:

- ``lit-cv fit`` (``lit_cv.cli.main``, exactly what the console script runs: progress bar, TensorBoard logger,
  checkpoints, LR monitor, the full metric set, the per-class table and ``metrics.json``) with ``E1`` and with ``E2``
  epochs; its epoch time is ``(T(E2) - T(E1)) / (E2 - E1)``, so start-up (parsing, data setup, sanity check, summary,
  the final table) cancels;
- the same net, optimizer, loss and cached tensors in a plain loop: batches sliced from the split's tensors with a
  fresh permutation per epoch (the fastest way to write it by hand; through the datamodule's DataLoader when the
  split has per-sample augmentation), then a validation pass counting correct predictions; timed the same way;
- the same training as the smallest LightningModule, fitted by a Trainer with every extra off (no logger,
  checkpoints, progress bar or summary) on the datamodule's loaders: what Lightning itself costs, timed the same way.

Prints per-round and median epoch times (wall and CPU: this process's CPU seconds, all threads, steadier than wall
time on a shared machine), the ratio (lit-cv / plain) with its min-max spread. ``--threads 1`` fixes torch's
intra-op threads (on a busy 2-core machine two threads stall each other in small ops); the rich progress bar renders
as in a terminal (``TTY_COMPATIBLE=1``, output swallowed), which is what a user at a terminal pays.

What the changes for issue 13 saved. Profiled first (cProfile with a CPU clock over ``lit-cv fit``, Lightning's
``SimpleProfiler``, micro-benchmarks of each piece); CPU ms on this 2-core machine, shared with other jobs:

- per-step metrics: the 5 torchmetrics + confusion matrix updated every step cost 0.42 ms a step (RPS: 66 ms an
  epoch); steps now append ``(probs, labels, loss)`` and the epoch end gathers them once (across ranks too) and
  computes everything (also the DDP ordering fix, see ``lit_cv.classifier``);
- per-step ``self.log``: Lightning 2.6 moves its record to the device on every call, ~0.5-0.9 ms; two calls a step
  (``train/batch_loss``, ``train/loss``) plus ``val/loss`` per validation step became one call every
  ``log_every_n_steps`` (RPS ~0.2 s an epoch, bank ~0.6 s);
- the confusion matrix image drawn with PIL instead of a matplotlib figure: 106 -> 4 ms a validation (3 classes),
  279 -> 23 ms (10 classes); FilterVisualization's PNG files likewise: 35-70 -> 4-10 ms each (4 a CNN2 epoch);
- batches sliced from cached tensors (``datamodules.loaders``: ``index_select`` per batch, no per-sample tuples, no
  collation): a loader epoch of RPS 24 -> 12 ms, of bank (566 batches of 64 rows) 188 -> 34 ms;
- altogether, ``--trainer.callbacks '[]'`` (the issue's defaults: bar, checkpoints, LR monitor, all metrics, the
  per-class table), 5 rounds of 1 vs 6 epochs, CPU time: RPS 2.32 -> 1.39 s an epoch (ratio 3.24 -> 2.21, plain
  0.66 s); bank-full (1 vs 4 epochs) 6.15 -> 2.53 s (ratio 5.49 -> 2.56, plain 0.93 s).
- the progress bar: Lightning's ``RichProgressBar`` re-reads every logged metric and renders after each batch
  (~1 ms CPU); ``callbacks.RichProgressBar`` (the CLI's default) does it at most 10 times a second and at each
  epoch's last batch. With it, 3 rounds, median (min-max), the three arms side by side: RPS (1 vs 4 epochs): plain
  0.39 s wall an epoch, bare Lightning 1.25x wall / 1.26x CPU, lit-cv 1.62x wall / 1.52x CPU; bank-full
  (``configs/bank_mlp_plain.yaml``, 1 vs 3 epochs): plain 0.76 s wall, bare Lightning 1.46x wall (1.32-1.56) /
  1.44x CPU, lit-cv 2.00x wall (1.61-2.07) / 1.93x CPU (1.72-2.02). The goal, 1.15, is not met: a bare Trainer
  alone is past it.
- Lightning's hook bookkeeping (py-spy over ``lit-cv fit``, a bare Trainer and the plain loop, 12 epochs each, one
  thread): ``_current_fx_name`` is written through ``nn.Module.__setattr__`` twice a hook call, 44 times a training
  step; ``Classifier.__setattr__`` makes it a plain attribute write: 1.27 -> 0.19 us a call (timeit), ~0.05 ms of a
  ~2.6 ms CNN2 step (2%, inside the rounds' spread: not measurable end to end). ``ModelCheckpoint.state_key``,
  rebuilt at each of its 6 hook calls a step, costs 0.005 ms a step: left alone. Afterwards, 5 rounds RPS (1 vs 4
  epochs): plain 0.41 s wall, bare Lightning 1.23x wall (1.05-1.49) / 1.24x CPU, lit-cv 1.41x wall (1.24-1.71) /
  1.37x CPU; ``--threads 1``: plain 0.44 s, bare 1.34x, lit-cv 1.45x (both spanning ~1.0-1.6). bank-full (3 rounds,
  1 vs 3 epochs): plain 0.60 s, bare 1.28x wall / 1.38x CPU, lit-cv 1.80x / 1.78x. There the next cost is
  Lightning's dispatch of every hook to every callback (~11% of an epoch in py-spy: the loop and a profiler context
  per callback, most hooks being the base no-op); cutting it means replacing Lightning's private
  ``_call_callback_hooks``: not done.
- measurement: only the plain loop used to be warmed up, so one-off costs of the first ``lit-cv fit`` and bare Trainer
  run of a process (imports, first kernels) could land in ``T(E1)`` and shrink their epoch time in the first round;
  every arm now runs once untimed first (rounds still range widely: machine noise). 2026-12-03 (plain epoch 0.25 s),
  RPS 5 rounds 1 vs 4 epochs: lit-cv 1.75x wall / 1.69x CPU (0.83-2.39), bare 1.88x / 1.61x; bank-full 3 rounds 1 vs
  3: lit-cv 1.55x / 1.54x (1.17-1.86), bare 1.16x / 1.32x. A checkpoint write of the CNN2 run costs 4.4 ms (fsync 0.6
  ms), 24 in 12 epochs: not where the time goes.
Not cut here: two checkpoint writes an epoch (~5 ms each) and Lightning's per-callback hook dispatch (above).
cProfile had put ``_current_fx_name``'s writes at ~0.5 ms a step: its per-call overhead inflates small calls;
timeit gives 0.05 ms. What lit-cv adds over the bare Trainer (0.2x-0.5x of the plain loop) is the per-step
bookkeeping of predictions, the callbacks' own hooks and the epoch-end metrics, checkpoints and images.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from datamodules.loaders import split_tensors


def _optimizer(config: Any, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The config's ``model.optimizer`` (``class_path`` + ``init_args``) on ``params``."""
    module, _, name = config.class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(params, **config.init_args.as_dict())


def _limit(count: int, limit: float | None) -> int:
    """Batches taken of ``count`` as ``Trainer(limit_*_batches=limit)`` takes them (int: count, float: share)."""
    if limit is None:
        return count
    return min(count, limit if isinstance(limit, int) else int(count * limit))


def _batches(dataset: Any, loader: Any, batch_size: int, shuffle: bool, limit: Any) -> Any:
    """``(x, y)`` batches: sliced from the split's tensors when it has them, else from ``loader``."""
    tensors = split_tensors(dataset)
    if tensors is None:
        for index, batch in enumerate(loader):
            if index >= _limit(len(loader), limit):
                return
            yield batch[0], batch[1]
        return
    x, y = tensors
    order = torch.randperm(len(y)) if shuffle else torch.arange(len(y))
    count = _limit(-(-len(y) // batch_size), limit)
    for index in order[: count * batch_size].split(batch_size):
        yield x[index], y[index]


def plain_loop(cli_args: list[str], epochs: int | None = None) -> dict[str, Any]:
    """Train the net of ``lit-cv fit CLI_ARGS`` in a plain loop for ``epochs`` (default: the config's
    ``max_epochs``); returns the seconds, the epochs and the last validation accuracy.

    Raises:
        ValueError: when the config has a learning-rate scheduler or an L1 penalty (the loop has neither).
    """
    from lit_cv.cli import LitCVCLI

    with mock.patch.object(sys, "argv", sys.argv[:1]):  # args are given explicitly: no "both given" warning
        cli = LitCVCLI(args=cli_args, run=False)  # seeds, then builds the net and data exactly as `lit-cv fit`
    config, trainer = cli.config["model"], cli.trainer
    if config["lr_scheduler"] is not None or config["l1_lambda"]:
        raise ValueError("The plain loop has no scheduler and no L1 penalty; add --model.lr_scheduler null "
                         "--model.l1_lambda 0 to compare like with like.")
    epochs = trainer.max_epochs if epochs is None else epochs
    binary = config["task"] == "binary"
    loss_fn = nn.BCEWithLogitsLoss() if binary else nn.CrossEntropyLoss()
    device = trainer.strategy.root_device
    net = cli.model.net.to(device)
    optimizer = _optimizer(config["optimizer"], [p for p in net.parameters() if p.requires_grad])
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    batch_size = train_loader.batch_size or train_loader.batch_sampler.batch_size
    correct = total = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        net.train()
        for x, y in _batches(train_loader.dataset, train_loader, batch_size, True, trainer.limit_train_batches):
            logits = net(x.to(device))
            y = y.to(device)
            loss = loss_fn(logits.squeeze(1), y.float()) if binary else loss_fn(logits, y.long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in _batches(val_loader.dataset, val_loader, batch_size, False, trainer.limit_val_batches):
                logits = net(x.to(device))
                preds = (logits.squeeze(1) > 0).long() if binary else logits.argmax(dim=1)
                correct += int((preds.cpu() == y).sum())
                total += len(y)
    return {"plain_loop_seconds": time.perf_counter() - start, "plain_loop_cpu_seconds": time.process_time() - cpu_start,
            "plain_loop_val/acc": correct / max(total, 1), "epochs": epochs, "device": str(device)}


def bare_lightning_seconds(cli_args: list[str], epochs: int) -> tuple[float, float]:
    """Wall and CPU seconds of the plain loop's training written as the smallest LightningModule (loss, backward,
    step; validation counts correct predictions) on the datamodule's own loaders, fitted by a Trainer with every
    extra off (no logger, checkpoints, progress bar, summary, sanity check): what Lightning itself costs."""
    from lightning.pytorch import LightningModule, Trainer

    from lit_cv.cli import LitCVCLI

    with mock.patch.object(sys, "argv", sys.argv[:1]):
        cli = LitCVCLI(args=cli_args, run=False)
    config, limits = cli.config["model"], cli.trainer
    binary = config["task"] == "binary"

    class Bare(LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net, self.loss_fn = net, nn.BCEWithLogitsLoss() if binary else nn.CrossEntropyLoss()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch[0], batch[1]
            logits = self.net(x)
            return self.loss_fn(logits.squeeze(1), y.float()) if binary else self.loss_fn(logits, y.long())

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            logits = self.net(batch[0])
            preds = (logits.squeeze(1) > 0).long() if binary else logits.argmax(dim=1)
            self.correct = int((preds == batch[1]).sum())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return _optimizer(config["optimizer"], [p for p in self.parameters() if p.requires_grad])

    trainer = Trainer(accelerator="auto", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_train_batches=limits.limit_train_batches, limit_val_batches=limits.limit_val_batches)
    start, cpu_start = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(Bare(cli.model.net), datamodule=cli.datamodule)
    return time.perf_counter() - start, time.process_time() - cpu_start


def cli_fit_seconds(cli_args: list[str], epochs: int, save_dir: Path) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of ``lit-cv fit CLI_ARGS --trainer.max_epochs EPOCHS`` run
    in this process, its console output swallowed."""
    from lit_cv.cli import main

    args = ["fit", *cli_args, "--trainer.max_epochs", str(epochs), "--trainer.logger.init_args.save_dir",
            str(save_dir)]
    start, cpu_start = time.perf_counter(), time.process_time()
    # rich renders the progress bar as in a terminal (the output is swallowed): what a user at a terminal pays
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            mock.patch.object(sys, "argv", sys.argv[:1]), mock.patch.dict(os.environ, {"TTY_COMPATIBLE": "1"}):
        main(args)
    return time.perf_counter() - start, time.process_time() - cpu_start


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


CLOCKS = ("wall", "cpu")


KINDS = ("plain", "bare", "cli")  # the plain loop, a bare Lightning Trainer, lit-cv fit


def plain_loop_seconds(cli_args: list[str], epochs: int) -> tuple[float, float]:
    """Wall and CPU seconds of :func:`plain_loop`."""
    run = plain_loop(cli_args, epochs=epochs)
    return run["plain_loop_seconds"], run["plain_loop_cpu_seconds"]


def compare(cli_args: list[str], rounds: int, e1: int, e2: int) -> dict[str, Any]:
    """Interleaved rounds of the plain loop, a bare Lightning Trainer and ``lit-cv fit`` (the order rotates each
    round): per-epoch wall and CPU times and their ratios to the plain loop. Each arm runs once before the rounds,
    untimed: first-call costs (imports, decode caches, torch's first kernels) would otherwise land in the first
    ``E1`` run of that arm and shrink its ``T(E2) - T(E1)``."""
    with tempfile.TemporaryDirectory() as tmp:
        arms = {"plain": lambda e, tag: plain_loop_seconds(cli_args, e),
                "bare": lambda e, tag: bare_lightning_seconds(cli_args, e),
                "cli": lambda e, tag: cli_fit_seconds(cli_args, e, Path(tmp) / tag)}
        for kind in KINDS:
            arms[kind](e1, "warm-up")
        per_round = []
        for r in range(rounds):
            times: dict[str, float] = {}
            for kind in KINDS[r % 3:] + KINDS[: r % 3]:
                clocks = [arms[kind](e, f"r{r}e{e}") for e in (e1, e2)]
                for i, clock in enumerate(CLOCKS):
                    times[f"{kind}_{clock}"] = (clocks[1][i] - clocks[0][i]) / (e2 - e1)
            for clock in CLOCKS:
                times[f"ratio_{clock}"] = times[f"cli_{clock}"] / times[f"plain_{clock}"]
                times[f"ratio_bare_{clock}"] = times[f"bare_{clock}"] / times[f"plain_{clock}"]
            per_round.append(times)
            print(f"round {r + 1}: " + ", ".join(
                f"{clock}: plain {times[f'plain_{clock}']:.3f} s/epoch, bare Lightning {times[f'bare_{clock}']:.3f}, "
                f"lit-cv {times[f'cli_{clock}']:.3f}, ratio {times[f'ratio_{clock}']:.3f}" for clock in CLOCKS),
                flush=True)
    for clock in CLOCKS:
        print(f"{clock} time  plain loop s/epoch: {_spread([t[f'plain_{clock}'] for t in per_round])}")
        print(f"{clock} time  bare Lightning s/epoch: {_spread([t[f'bare_{clock}'] for t in per_round])}")
        print(f"{clock} time  lit-cv fit s/epoch: {_spread([t[f'cli_{clock}'] for t in per_round])}")
        print(f"{clock} time  ratio bare Lightning / plain: {_spread([t[f'ratio_bare_{clock}'] for t in per_round])}")
        print(f"{clock} time  ratio lit-cv / plain: {_spread([t[f'ratio_{clock}'] for t in per_round])}")
    median = {key: statistics.median(t[key] for t in per_round) for key in per_round[0]}
    return {"rounds": per_round, "median": median, "epochs": [e1, e2], "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 1)")
    parser.add_argument("--epochs", type=int, nargs=2, default=(1, 3), metavar=("E1", "E2"),
                        help="the two run lengths whose difference is timed")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both (default: torch's; 1 is steadier on a shared machine)")
    parser.add_argument("--plain-only", action="store_true", help="only run the plain loop once (max_epochs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    options, cli_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not cli_args:
        parser.error("give the experiment, e.g. --config configs/rps_cnn2_dropout.yaml")
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    e1, e2 = options.epochs
    if options.rounds < 1 or not 1 <= e1 < e2:
        parser.error(f"need --rounds >= 1 and 1 <= E1 < E2, got --rounds {options.rounds} --epochs {e1} {e2}")
    if options.plain_only:
        result = plain_loop(cli_args)
        print(f"plain PyTorch loop: {result['epochs']} epochs in {result['plain_loop_seconds']:.1f} s on "
              f"{result['device']}, val/acc {result['plain_loop_val/acc']:.4f}")
    else:
        result = compare(cli_args, options.rounds, e1, e2)
    if options.json is not None:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
