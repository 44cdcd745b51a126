"""LR-suggestion stability: ``lit-cv lr-find``'s default suggestion beside torch-lr-finder's, over seeds and datasets.

    nice -n 10 .venv/bin/python benchmarks/lr_stability.py --data-root ../shared/data [--datasets rps digits]
        [--seeds 0 1 2 3 4] [--json FILE]

For each dataset and seed the experiment is built as ``lit-cv lr-find`` builds it (``LitCVCLI`` with
``--seed_everything SEED``), then both tools run the range test on the same net, initialised once, and the same
training dataloader, from the same RNG state (lit-cv's test restores weights and RNG afterwards, which is checked):

- lit-cv: ``callbacks.LRRangeTest`` at fit start, exactly as ``lit-cv lr-find`` runs it, with its default method;
- torch-lr-finder (the course's tool, installed into this interpreter with pip when missing, at run time: it is not a
  dependency of the project): ``LRFinder.range_test`` with the config's optimizer and the Classifier's loss, and
  ``LRFinder.plot(suggest_lr=True)``'s steepest gradient.

Both use the same LR range and number of LRs (torch-lr-finder's ``num_iter = num_iter + 1`` LRs end-inclusive, the
same geometric sequence as lit-cv's), smoothing 0.05, divergence at 5x the best smoothed loss, and skip the first
10 and last 5 points when suggesting (torch-lr-finder's defaults). The stability of a tool on a dataset is the
max/min ratio of its suggestions over the seeds (1 = the same LR every time). lit-cv's other methods are printed too.

Settings: ``rps`` is the course's (CNN2, Adam from 3e-4 to 0.1); ``digits`` (quickstart), ``mnist`` (ConvNet on the
10,000 real test images, ``train_from: test``) and ``bank`` (MLP on ``bank.csv``) sweep Adam from 1e-5 to 1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIT_CV_SHARED_DATA", REPO.parent / "shared" / "data"))
PEER = "torch-lr-finder"  # the pip name; imported as torch_lr_finder
COMMON = {"num_iter": 100, "smoothing": 0.05, "diverge_th": 5.0, "skip_begin": 10, "skip_end": 5}  # both tools


@dataclass(frozen=True)
class Setting:
    """One dataset's experiment: a config, its data arguments under the data root, the LR range swept."""

    config: str
    data_args: tuple[str, ...]  # "{root}" is replaced by --data-root
    start_lr: float
    end_lr: float


SETTINGS = {
    "rps": Setting("configs/rps_cnn2_dropout.yaml", ("--data.init_args.data_dir", "{root}/rps"), 3e-4, 0.1),
    "digits": Setting("configs/quickstart.yaml", (), 1e-5, 1.0),
    "mnist": Setting("configs/mnist_convnet.yaml", ("--data.init_args.data_dir", "{root}/mnist",
                                                    "--data.init_args.train_from", "test"), 1e-5, 1.0),
    "bank": Setting("configs/bank_mlp_plain.yaml", ("--data.init_args.data_dir", "{root}/bank/bank.csv"), 1e-5, 1.0),
}


def ensure_peer() -> Any:
    """``torch_lr_finder``, installed with this interpreter's pip first when it is missing."""
    try:
        return importlib.import_module("torch_lr_finder")
    except ImportError:
        print(f"lr_stability: installing {PEER} (pip install {PEER}) for this run", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", PEER], check=True)
        importlib.invalidate_caches()
        return importlib.import_module("torch_lr_finder")


def _optimizer(config: Any, params: Any) -> Any:
    """The config's ``model.optimizer`` (``class_path`` + ``init_args``) on ``params``."""
    module, _, name = config.class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(params, **config.init_args.as_dict())


def _cli_args(setting: Setting, root: Path, seed: int, out: Path, extra: list[str]) -> list[str]:
    data = [arg.replace("{root}", str(root)) for arg in setting.data_args]
    return ["--config", str(REPO / setting.config), *data, f"--seed_everything={seed}",
            f"--trainer.logger.init_args.save_dir={out}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu", *extra]


def one_seed(setting: Setting, root: Path, seed: int, extra: list[str] | None = None,
             num_iter: int = COMMON["num_iter"]) -> dict[str, Any]:
    """Both tools on one seed; returns their suggestions and curves."""
    import matplotlib

    matplotlib.use("Agg")
    import torch
    from matplotlib import pyplot as plt

    from callbacks.lr_range_test import LRRangeTest
    from lit_cv.commands import build_experiment

    peer = ensure_peer()
    params = {**COMMON, "num_iter": num_iter, "start_lr": setting.start_lr, "end_lr": setting.end_lr}
    with tempfile.TemporaryDirectory() as out:
        with mock.patch.object(sys, "argv", sys.argv[:1]):  # args are given explicitly: no "both given" warning
            cli = build_experiment(_cli_args(setting, root, seed, Path(out), extra or []))
        module, net = cli.model, cli.model.net
        initial = copy.deepcopy(net.state_dict())
        finder = LRRangeTest(exit_after=True, **params)
        cli.trainer.callbacks.append(finder)
        cli.trainer.fit(module, datamodule=cli.datamodule)  # what `lit-cv lr-find` does
        ours = finder.result
        if ours is None:
            raise RuntimeError("lit-cv's range test did not run.")
        if any(not torch.equal(initial[k], v) for k, v in net.state_dict().items()):
            raise RuntimeError("lit-cv's range test did not restore the weights: the peer would start elsewhere.")

        def criterion(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return module.compute_loss(module._check_logits(logits), y)  # the loss of Classifier.training_step

        optimizer = _optimizer(cli.config["model"]["optimizer"], [p for p in net.parameters() if p.requires_grad])
        loader = peer.TrainDataLoaderIter(cli.datamodule.train_dataloader())  # takes any (x, y) iterable
        lr_finder = peer.LRFinder(net, optimizer, criterion, device="cpu")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            lr_finder.range_test(loader, start_lr=setting.start_lr, end_lr=setting.end_lr, num_iter=num_iter + 1,
                                 step_mode="exp", smooth_f=COMMON["smoothing"], diverge_th=COMMON["diverge_th"])
            fig, ax = plt.subplots()
            try:
                _, peer_lr = lr_finder.plot(skip_start=COMMON["skip_begin"], skip_end=COMMON["skip_end"], ax=ax,
                                            suggest_lr=True)
            except RuntimeError:  # too few points before divergence
                peer_lr = None
            plt.close(fig)
        lr_finder.reset()
    return {
        "seed": seed,
        "lit_cv": ours.suggestion,
        "lit_cv_method": ours.method,
        "lit_cv_methods": ours.suggestions,
        "lit_cv_index": ours.suggestion_index,
        "lit_cv_points": len(ours.lrs),
        "peer": None if peer_lr is None else float(peer_lr),
        "peer_points": len(lr_finder.history["lr"]),
        "lrs": ours.lrs,
        "lit_cv_raw": [v if math.isfinite(v) else None for v in ours.raw_losses],
        "peer_lrs": [float(v) for v in lr_finder.history["lr"]],
        "peer_smoothed": [float(v) for v in lr_finder.history["loss"]],
    }


def ratio(values: list[float | None]) -> float | None:
    """max/min of the suggestions (None when a seed gave none: an unstable tool)."""
    if not values or any(v is None or v <= 0 for v in values):
        return None
    return max(values) / min(values)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _same_curve(row: dict[str, Any]) -> bool:
    """lit-cv's smoothed curve equals torch-lr-finder's: same data, init and RNG, point for point."""
    from callbacks.lr_range_test.curve import smooth_losses

    ours = smooth_losses([math.nan if v is None else v for v in row["lit_cv_raw"]], COMMON["smoothing"])
    theirs = row["peer_smoothed"]
    return len(ours) == len(theirs) and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(ours, theirs))


def table(name: str, setting: Setting, rows: list[dict[str, Any]], num_iter: int = COMMON["num_iter"]) -> str:
    """A Markdown table: each seed's suggestion by both tools (and lit-cv's other methods), then max/min."""
    method = rows[0]["lit_cv_method"]
    others = [m for m in rows[0]["lit_cv_methods"] if m != method]
    header = (f"| seed | lit-cv {method} (default) | {PEER} steepest | "
              + " | ".join(f"lit-cv {m}" for m in others) + " | points | same curve |")
    lines = [f"### {name}: {setting.config}, {num_iter} steps from {setting.start_lr:g} to {setting.end_lr:g}",
             "", header, "|---" * (5 + len(others)) + "|"]
    for row in rows:
        lines.append(f"| {row['seed']} | {_fmt(row['lit_cv'])} | {_fmt(row['peer'])} | "
                     + " | ".join(_fmt(row["lit_cv_methods"][m]) for m in others)
                     + f" | {row['lit_cv_points']} | {'yes' if _same_curve(row) else 'no'} |")
    lines.append(f"| max/min | **{_fmt(ratio([r['lit_cv'] for r in rows]))}** | "
                 f"**{_fmt(ratio([r['peer'] for r in rows]))}** | "
                 + " | ".join(_fmt(ratio([r["lit_cv_methods"][m] for r in rows])) for m in others) + " | | |")
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    """One line per dataset: both tools' max/min and whether lit-cv's default is at least as stable."""
    lines = ["| dataset | lit-cv default max/min | torch-lr-finder max/min | lit-cv as stable |", "|---|---|---|---|"]
    for name, result in results.items():
        ours, theirs = result["ratio_lit_cv"], result["ratio_peer"]
        stable = ours is not None and (theirs is None or ours <= theirs)
        lines.append(f"| {name} | {_fmt(ours)} | {_fmt(theirs)} | {'yes' if stable else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--data-root", type=Path, default=SHARED, help="folder holding rps/, mnist/, bank/")
    parser.add_argument("--datasets", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--num-iter", type=int, default=COMMON["num_iter"], help="LR steps (both tools)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (1: steady on 2 cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write suggestions and curves here")
    options, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(options.torch_threads)
    ensure_peer()
    results: dict[str, Any] = {}
    for name in options.datasets:
        setting = SETTINGS[name]
        rows = [one_seed(setting, options.data_root, seed, extra, options.num_iter) for seed in options.seeds]
        results[name] = {"setting": setting.__dict__, "rows": rows,
                         "ratio_lit_cv": ratio([r["lit_cv"] for r in rows]),
                         "ratio_peer": ratio([r["peer"] for r in rows])}
        print(table(name, setting, rows, options.num_iter) + "\n", flush=True)
    print(summary(results), flush=True)
    if options.json is not None:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
