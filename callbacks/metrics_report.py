"""Report the final metrics of a run as a printed table, ``metrics.json`` and TensorBoard HPARAMS."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from callbacks.run_dir import run_dir


def _to_number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float)):
        return float(value)
    return None


def per_class_counts(confusion: torch.Tensor, class_names: list[str]) -> dict[str, dict[str, int]]:
    """``{class: {"correct": n, "total": m}}`` from a confusion matrix (rows = true class, cols = predicted)."""
    confusion = confusion.detach().cpu().long()
    return {
        name: {"correct": int(confusion[i, i]), "total": int(confusion[i].sum())}
        for i, name in enumerate(class_names)
    }


def collect_metrics(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
    """Scalar metrics logged so far (``trainer.callback_metrics``) plus per-class counts and run facts.

    Returns a JSON-ready dict: ``{"metrics": {name: value}, "per_class": {stage: {class: {correct, total}}},
    "epoch": .., "global_step": .., "best_checkpoint": ..}``.
    """
    metrics = {}
    for name, value in sorted(trainer.callback_metrics.items()):
        number = _to_number(value)
        if number is not None and name != "train/batch_loss":
            metrics[name] = number
    report: dict[str, Any] = {"metrics": metrics}
    confusion = getattr(pl_module, "confusion", {})
    class_names = getattr(pl_module, "class_names", None)
    if confusion and class_names:
        report["per_class"] = {stage: per_class_counts(cm, class_names) for stage, cm in confusion.items()}
    report["epoch"] = trainer.current_epoch
    report["global_step"] = trainer.global_step
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and getattr(checkpoint, "best_model_path", ""):
        report["best_checkpoint"] = checkpoint.best_model_path
        best = _to_number(checkpoint.best_model_score)
        if best is not None:
            report["best_score"] = {checkpoint.monitor: best}
    return report


def write_metrics_json(path: Path, stage: str, report: dict[str, Any]) -> Path:
    """Merge ``report`` under ``stage`` into the JSON file at ``path`` (fit, validate and test share one file)."""
    existing: dict[str, Any] = {}
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {}
    existing[stage] = report
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(existing, indent=2, allow_nan=True))
    tmp.replace(path)
    return path


def render_table(stage: str, report: dict[str, Any]) -> Any:
    """A rich Table of the metrics and per-class ``correct / total`` counts."""
    from rich.table import Table

    table = Table(title=f"lit-cv {stage}: final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report["metrics"].items():
        if "/acc_class/" in name:
            continue
        table.add_row(name, "nan" if math.isnan(value) else f"{value:.4f}")
    for split, classes in report.get("per_class", {}).items():
        for cls, counts in classes.items():
            table.add_row(f"{split} {cls}", f"{counts['correct']} / {counts['total']}")
    return table


class MetricsReport(Callback):
    """At the end of ``fit``, ``validate`` and ``test``: print a table of the final metrics, write them to
    ``metrics.json`` in the logger's run directory (merged per stage) and print its path. During ``fit`` it keeps a
    per-epoch ``history`` of the validation metrics with the elapsed training seconds (time-to-accuracy), kept in
    the checkpoint so a resumed run continues it. After ``fit`` the
    hyperparameters go to TensorBoard's HPARAMS tab together with the final validation metrics (``hp/...``), so runs
    compare side by side. Rank zero only. The ``lit-cv`` CLI adds this callback to every run.

    Per-class ``correct / total`` counts are read from two attributes of the LightningModule, when it has them
    (``lit_cv.Classifier`` does): ``confusion`` (``{stage: confusion matrix}``, rows = true class) and
    ``class_names``.

    Args:
        filename: name of the JSON file in ``trainer.log_dir``.

    Example::

        trainer:
          callbacks:
            - class_path: callbacks.MetricsReport
    """

    def __init__(self, filename: str = "metrics.json") -> None:
        if not filename.endswith(".json"):
            raise ValueError(f"MetricsReport filename must end in .json, got {filename!r}.")
        self.filename = filename
        self.last_path: Path | None = None
        self.history: list[dict[str, float]] = []
        self.fit_seconds = 0.0  # training wall time summed over (resumed) fits
        self._fit_started: float | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def _elapsed(self) -> float:
        running = time.perf_counter() - self._fit_started if self._fit_started is not None else 0.0
        return self.fit_seconds + running

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.fit_seconds = self._elapsed()
        self._fit_started = None
        self._report(trainer, pl_module, "fit")
        self._log_hparams(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._report(trainer, pl_module, "validate")
        elif trainer.state.fn == "fit" and not trainer.sanity_checking:
            entry = {"epoch": trainer.current_epoch, "seconds": round(self._elapsed(), 3)}
            for name, value in trainer.callback_metrics.items():
                number = _to_number(value)
                if name.startswith("val/") and "/acc_class/" not in name and number is not None:
                    entry[name] = number
            self.history = [h for h in self.history if h["epoch"] != entry["epoch"]] + [entry]

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "fit_seconds": self._elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.fit_seconds = float(state_dict.get("fit_seconds", 0.0))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    @rank_zero_only
    def _report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from rich.console import Console

        report = collect_metrics(trainer, pl_module)
        if stage == "fit":
            report["fit_seconds"] = round(self.fit_seconds, 3)
            report["history"] = self.history
        console = Console()
        console.print(render_table(stage, report))
        if trainer.fast_dev_run:  # a debug run: like Lightning's loggers and checkpoints, no files
            return
        self.last_path = write_metrics_json(run_dir(trainer) / self.filename, stage, report)
        console.print(f"metrics written to {self.last_path}")

    @rank_zero_only
    def _log_hparams(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.logger is None:
            return
        params = dict(pl_module.hparams_initial)
        if trainer.datamodule is not None:
            params.update(trainer.datamodule.hparams_initial)
        final = {
            f"hp/{name}": value
            for name, value in collect_metrics(trainer, pl_module)["metrics"].items()
            if name.startswith("val/") and "/acc_class/" not in name
        }
        if final:
            trainer.logger.log_hyperparams(params, metrics=final)
