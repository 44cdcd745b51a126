"""Run one experiment and return its row: ``lit-cv fit`` or ``lit-cv lr-find`` in a subprocess, or the normaliser.

Every training row runs the configs a user runs, through the public CLI, then reads the run's ``metrics.json``.
``quick=True`` shortens every row to one epoch of two batches (a smoke run; its numbers mean nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lit_cv.experiments.holdout import HOLDOUTS, Holdout
from lit_cv.experiments.registry import REPO, Experiment

QUICK_FIT_ARGS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches",
                  "2"]
QUICK_TEST_ARGS = ["--trainer.limit_test_batches", "2"]
QUICK_LR_ARGS = ["--num-iter", "5", "--skip-begin", "0", "--skip-end", "0"]
OVERHEAD_SCRIPT = REPO / "benchmarks" / "overhead.py"


def _run(command: list[str], log: Path) -> tuple[int, float]:
    """Run ``command`` from the repository root, output to ``log``; returns (exit code, wall seconds)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                              check=False).returncode
    return code, time.perf_counter() - start


def _lit_cv(args: list[str], log: Path) -> tuple[int, float]:
    return _run([sys.executable, "-m", "lit_cv.cli", *args], log)


def _config_args(exp: Experiment, data_dir: Path, data_args: list[str] | None = None) -> list[str]:
    """The row's configs, then ``data_args`` (default: ``data_dir`` as the data folder), then the row's arguments."""
    args = [a for c in exp.configs for a in ("--config", str(REPO / c))]
    return args + (data_args or ["--data.init_args.data_dir", str(data_dir)]) + exp.args


def _logger_args(exp: Experiment, out: Path, name: str | None = None) -> list[str]:
    return ["--trainer.logger.init_args.save_dir", str(out / "runs"), "--trainer.logger.init_args.name",
            name or exp.name, "--trainer.enable_progress_bar", "false"]


def _latest_run(root: Path) -> Path:
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise FileNotFoundError(f"no run directory under {root}")
    return versions[-1]


def _seconds(value: float | None) -> float | None:
    """Seconds to 3 significant digits (163 s, 5.61 s, 0.0421 s): enough for a report, never rounded to zero."""
    return None if value is None else float(f"{value:.3g}")


def time_to_target(history: list[dict[str, float]], target: tuple[str, float] | None) -> dict[str, Any]:
    """First epoch (1-based) and training seconds at which ``metric >= value``; None when never reached."""
    if target is None:
        return {}
    metric, value = target
    for entry in history:
        if entry.get(metric, float("-inf")) >= value:
            return {"target": f"{metric} >= {value}", "target_epoch": int(entry["epoch"]) + 1,
                    "target_seconds": _seconds(entry["seconds"])}
    return {"target": f"{metric} >= {value}", "target_epoch": None, "target_seconds": None}


def evaluate_on_train(exp: Experiment, data_dir: Path, out: Path, checkpoint: Path) -> dict[str, Any]:
    """Accuracy of the final weights on the whole training split in eval mode (the course's train figure)."""
    import torch

    from callbacks.model_checkpoint import load_checkpoint_safely
    from lit_cv.cli import LitCVCLI

    args = _config_args(exp, data_dir) + ["--trainer.logger.init_args.save_dir", str(out / "scratch")]
    cli = LitCVCLI(args=args, run=False)
    model, dm = cli.model, cli.datamodule
    model.load_state_dict(load_checkpoint_safely(checkpoint)["state_dict"])
    model.eval()
    dm.prepare_data()
    dm.setup("fit")
    correct = total = 0
    with torch.no_grad():
        for x, y in dm.train_dataloader():
            correct += int((model.predict_step((x, y), 0)["preds"] == y).sum())
            total += len(y)
    return {"train_eval/acc": correct / total, "train_eval/correct": correct, "train_eval/total": total}


def plain_loop(exp: Experiment, data_dir: Path, out: Path, quick: bool) -> dict[str, Any]:
    """``benchmarks/overhead.py`` on the same configs: the training as a plain PyTorch loop, timed."""
    result = out / "overhead" / f"{exp.name}.json"
    command = [sys.executable, str(OVERHEAD_SCRIPT), *_config_args(exp, data_dir),
               "--trainer.logger.init_args.save_dir", str(out / "scratch"), *(QUICK_FIT_ARGS if quick else []),
               "--plain-only", "--json", str(result)]
    code, _ = _run(command, out / "logs" / f"{exp.name}_overhead.log")
    if code != 0:
        raise RuntimeError(f"benchmarks/overhead.py exit {code}, see logs/{exp.name}_overhead.log")
    timing = json.loads(result.read_text())
    return {"plain_loop_seconds": timing["plain_loop_seconds"], "plain_loop_val/acc": timing["plain_loop_val/acc"]}


def flip_wins(without: dict[str, float], flipped: dict[str, float]) -> bool:
    """The rule for test-time flips, fixed before any run: lower val/loss and val/acc not lower."""
    return flipped["val/loss"] < without["val/loss"] and flipped["val/acc"] >= without["val/acc"]


def choose_test_time_flip(exp: Experiment, holdout: Holdout, out: Path, checkpoint: str,
                          quick: bool) -> dict[str, Any]:
    """``lit-cv validate`` of the selected checkpoint on the fit's validation split without and with
    ``--model.test_time_flip``; ``test_time_flip`` says whether the test pass uses it (:func:`flip_wins`)."""
    scores: dict[bool, dict[str, float]] = {}
    for flip in (False, True):
        name = f"{exp.name}_validate_flip_{str(flip).lower()}"
        args = ["validate", *_config_args(exp, holdout.fit_dir, holdout.fit_args), *_logger_args(exp, out, name),
                "--model.test_time_flip", str(flip).lower(), "--ckpt_path", checkpoint,
                *(["--trainer.limit_val_batches", "2"] if quick else [])]
        code, _ = _lit_cv(args, out / "logs" / f"{name}.log")
        if code != 0:
            raise RuntimeError(f"lit-cv validate exit {code}, see logs/{name}.log")
        report = json.loads((_latest_run(out / "runs" / name) / "metrics.json").read_text())["validate"]
        scores[flip] = {k: report["metrics"][k] for k in ("val/acc", "val/loss")}
    return {"test_time_flip": flip_wins(scores[False], scores[True]),
            "flip_validation": {"without": scores[False], "flipped": scores[True]}}


def test_once(exp: Experiment, holdout: Holdout, out: Path, checkpoint: str | None, quick: bool,
              extra_args: list[str] | None = None) -> dict[str, Any]:
    """``lit-cv test`` of the selected checkpoint on the held-out test set: the row's one look at it."""
    if not checkpoint:
        raise RuntimeError(f"{exp.name}: the fit saved no best checkpoint to test; see logs/{exp.name}.log")
    name = f"{exp.name}_test"
    args = ["test", *_config_args(exp, holdout.test_dir, holdout.test_args), *_logger_args(exp, out, name),
            *(extra_args or []), "--ckpt_path", checkpoint, *(QUICK_TEST_ARGS if quick else [])]
    code, wall = _lit_cv(args, out / "logs" / f"{name}.log")
    if code != 0:
        raise RuntimeError(f"lit-cv test exit {code}, see logs/{name}.log")
    report = json.loads((_latest_run(out / "runs" / name) / "metrics.json").read_text())["test"]
    return {"test_command": "lit-cv " + " ".join(args), "test_seconds": _seconds(wall),
            "test_metrics": {k: v for k, v in report["metrics"].items() if k.startswith("test/")},
            "per_class_test": report.get("per_class", {}).get("test", {}), "selected_checkpoint": checkpoint,
            "split_sizes": holdout.sizes}


def target_reached(metrics: dict[str, float], target: tuple[str, float] | None) -> dict[str, Any]:
    """For a target on the test set (measured once, so no epoch reaches it): whether the final figure meets it."""
    if target is None or not target[0].startswith("test/"):
        return {}
    metric, value = target
    return {"target": f"{metric} >= {value}", "target_reached": metrics.get(metric, float("-inf")) >= value}


def run_fit(exp: Experiment, data_dir: Path, out: Path, quick: bool) -> dict[str, Any]:
    holdout = HOLDOUTS[exp.data](data_dir, out / "cache" / "holdout" / exp.name) if exp.holdout else None
    args = ["fit", *_config_args(exp, data_dir, holdout.fit_args if holdout else None), *_logger_args(exp, out),
            *(QUICK_FIT_ARGS if quick else [])]
    code, wall = _lit_cv(args, out / "logs" / f"{exp.name}.log")
    row: dict[str, Any] = {"command": "lit-cv " + " ".join(args), "wall_seconds": _seconds(wall)}
    if code != 0:
        return {**row, "status": "failed", "error": f"exit {code}, see logs/{exp.name}.log"}
    run_dir = _latest_run(out / "runs" / exp.name)
    report = json.loads((run_dir / "metrics.json").read_text())["fit"]
    row.update(status="ok", run_dir=str(run_dir), metrics=report["metrics"], per_class=report.get("per_class", {}),
               epochs=report["epoch"], fit_seconds=_seconds(report.get("fit_seconds")),
               history=report.get("history", []))
    row["config"] = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else None
    row.update(time_to_target(report.get("history", []), exp.target))
    if exp.select and row["history"]:
        metric, mode = exp.select
        pick = max if mode == "max" else min
        best = pick(row["history"], key=lambda h: h.get(metric, float("-inf") if mode == "max" else float("inf")))
        row["selected_epoch"] = int(best["epoch"]) + 1
        row["metrics"].update({k: v for k, v in best.items() if k.startswith("val/")})
    if holdout is not None:
        extra: list[str] = []
        if exp.flip_candidate and report.get("best_checkpoint"):
            row.update(choose_test_time_flip(exp, holdout, out, report["best_checkpoint"], quick))
            extra = ["--model.test_time_flip", "true"] if row["test_time_flip"] else []
        row.update(test_once(exp, holdout, out, report.get("best_checkpoint"), quick, extra))
        row["metrics"].update(row["test_metrics"])
        row.update(target_reached(row["metrics"], exp.target))
    if exp.data == "rps" and exp.group == "course":
        row["metrics"].update(evaluate_on_train(exp, data_dir, out, run_dir / "checkpoints" / "last.ckpt"))
    if exp.plain_loop:
        plain = plain_loop(exp, data_dir, out, quick)
        fit_seconds = report.get("fit_seconds")
        if fit_seconds and plain["plain_loop_seconds"] > 0:  # ratio from the unrounded times
            row["framework_overhead_ratio"] = round(fit_seconds / plain["plain_loop_seconds"], 2)
        row.update(plain, plain_loop_seconds=_seconds(plain["plain_loop_seconds"]))
    return row


def run_lr_find(exp: Experiment, data_dir: Path, out: Path, quick: bool) -> dict[str, Any]:
    target = out / "lr_find" / exp.name
    args = ["lr-find", *_config_args(exp, data_dir), "--output-dir", str(target), *_logger_args(exp, out),
            *(QUICK_LR_ARGS if quick else [])]
    code, wall = _lit_cv(args, out / "logs" / f"{exp.name}.log")
    row: dict[str, Any] = {"command": "lit-cv " + " ".join(args), "wall_seconds": _seconds(wall)}
    results = sorted(target.glob("*.json"))
    if not results:
        return {**row, "status": "failed", "error": f"exit {code}, no JSON; see logs/{exp.name}.log"}
    result = json.loads(results[0].read_text())
    row.update(status="ok", metrics={"suggestion": result.get("suggestion")}, suggestions=result.get("suggestions"))
    return row


def run_normaliser(exp: Experiment, data_dir: Path, out: Path, quick: bool) -> dict[str, Any]:
    from datamodules import RPSDataModule

    start = time.perf_counter()
    dm = RPSDataModule(data_dir, image_size=28, normalize="train", cache="none", cache_dir=out / "cache")
    dm.prepare_data()
    dm.setup("fit")
    norm = dm.normalization
    metrics = {f"mean_{c}": float(v) for c, v in zip("rgb", norm.mean)}
    metrics.update({f"std_{c}": float(v) for c, v in zip("rgb", norm.std)})
    return {"status": "ok", "metrics": metrics, "wall_seconds": _seconds(time.perf_counter() - start),
            "command": "RPSDataModule(data_dir, image_size=28, normalize='train')"}


RUNNERS = {"fit": run_fit, "lr-find": run_lr_find, "normaliser": run_normaliser}
