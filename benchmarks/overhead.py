"""Lightning's overhead: a config's training as a plain PyTorch loop, timed, to compare with ``lit-cv fit``.

    python benchmarks/overhead.py --config configs/rps_cnn2_dropout.yaml --data.init_args.data_dir DIR [--json FILE]

Builds the net, datamodule and trainer settings as ``lit-cv fit`` does (every ``--config``/``--model.*``/``--data.*``/
``--trainer.*`` argument works), then trains the same net on the same dataloaders for ``trainer.max_epochs`` epochs
(``limit_train_batches`` / ``limit_val_batches`` honoured) with the config's optimizer and the task's torch loss, and
measures validation accuracy after each epoch. The ratio to the ``fit_seconds`` of ``lit-cv fit`` on the same config
is the framework's overhead; ``lit-cv reproduce`` reports both. The loop has no scheduler and no L1 penalty, so
configs with either are refused.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn


def _batches(loader: Any, limit: float) -> Any:
    """The first batches of ``loader`` as ``Trainer(limit_*_batches=limit)`` takes them (int: count, float: share)."""
    count = limit if isinstance(limit, int) else int(len(loader) * limit)
    for index, batch in enumerate(loader):
        if index >= count:
            return
        yield batch


def _optimizer(config: Any, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The config's ``model.optimizer`` (``class_path`` + ``init_args``) on ``params``."""
    module, _, name = config.class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(params, **config.init_args.as_dict())


def plain_loop(cli_args: list[str]) -> dict[str, Any]:
    """Train the net of ``lit-cv fit CLI_ARGS`` in a plain loop; returns seconds, epochs and the last val accuracy.

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
    binary = config["task"] == "binary"
    loss_fn = nn.BCEWithLogitsLoss() if binary else nn.CrossEntropyLoss()
    device = trainer.strategy.root_device
    net = cli.model.net.to(device)
    optimizer = _optimizer(config["optimizer"], [p for p in net.parameters() if p.requires_grad])
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    correct = total = 0
    start = time.perf_counter()
    for _ in range(trainer.max_epochs):
        net.train()
        for x, y in _batches(dm.train_dataloader(), trainer.limit_train_batches):
            logits = net(x.to(device))
            y = y.to(device)
            loss = loss_fn(logits.squeeze(1), y.float()) if binary else loss_fn(logits, y.long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in _batches(dm.val_dataloader(), trainer.limit_val_batches):
                logits = net(x.to(device))
                preds = (logits.squeeze(1) > 0).long() if binary else logits.argmax(dim=1)
                correct += int((preds.cpu() == y).sum())
                total += len(y)
    return {"plain_loop_seconds": time.perf_counter() - start, "plain_loop_val/acc": correct / max(total, 1),
            "epochs": trainer.max_epochs, "device": str(device)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    options, cli_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not cli_args:
        parser.error("give the experiment, e.g. --config configs/rps_cnn2_dropout.yaml")
    result = plain_loop(cli_args)
    print(f"plain PyTorch loop: {result['epochs']} epochs in {result['plain_loop_seconds']:.1f} s on "
          f"{result['device']}, val/acc {result['plain_loop_val/acc']:.4f}")
    if options.json is not None:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
