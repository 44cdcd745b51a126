"""Report the final metrics of a run as a printed table, ``metrics.json`` and TensorBoard HPARAMS."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from callbacks.run_dir import run_dir

# HPARAMS shows what a researcher compares between runs: each class and the arguments that differ from its defaults
# (so not torch's capturable/foreach/fused/... flags), plus these, shown even at their default value:
ALWAYS_SHOWN = {"optimizer": ("lr",), "data": ("batch_size", "augment", "image_size")}
# never shown: where the data are and how they are read, and what the CLI links from the datamodule
NOT_COMPARED = frozenset({"data_dir", "cache_dir", "cache", "num_workers", "download", "num_classes", "class_names"})
HPARAMS_RUN = "hparams"  # sub-folder of the run directory holding its TensorBoard hparams session


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


def format_value(value: float) -> str:
    """A metric as a reader compares it: 4 significant digits (``0.8790``, ``12.35``), or 3 in scientific notation
    below 1e-3 and from 1e5 on (an LR of ``3.00e-04``, not ``0.0000``)."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == 0:
        return "0"
    if not 1e-3 <= abs(value) < 1e5:
        return f"{value:.2e}"
    return f"{value:.{max(0, 3 - math.floor(math.log10(abs(value))))}f}"


def render_table(stage: str, report: dict[str, Any]) -> Any:
    """A rich Table of the metrics and per-class ``correct / total`` counts."""
    from rich.table import Table

    table = Table(title=f"lit-cv {stage}: final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report["metrics"].items():
        if "/acc_class/" in name:
            continue
        table.add_row(name, str(int(value)) if name.endswith("epoch") else format_value(value))
    for split, classes in report.get("per_class", {}).items():
        for cls, counts in classes.items():
            table.add_row(f"{split} {cls}", f"{counts['correct']} / {counts['total']}")
    return table


def _signature_defaults(cls: Any) -> dict[str, Any]:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: every argument counts as set
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so a YAML list equals a tuple default (``betas``)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def set_arguments(arguments: Mapping[str, Any], cls: Any, shown: Sequence[str] = ()) -> dict[str, Any]:
    """The ``arguments`` of ``cls`` that differ from its signature defaults (or have none), plus those in ``shown``
    whatever their value; private (``_class_path``, ``_instantiator``) and ``NOT_COMPARED`` keys left out."""
    defaults = _signature_defaults(cls)
    return {
        name: value
        for name, value in arguments.items()
        if not name.startswith("_")
        and name not in NOT_COMPARED
        and (name in shown or name not in defaults or _plain(value) != _plain(defaults[name]))
    }


def _import(class_path: str) -> Any:
    """The class, or None when it cannot be imported (then every argument counts as set)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _component(key: str, spec: Any) -> dict[str, Any]:
    """``{key: class name, key/arg: value}`` of a ``{class_path, init_args}`` spec (``none`` when unset)."""
    if spec is None:
        return {key: "none"}
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        return {key: type(spec).__name__}
    args = set_arguments(spec.get("init_args") or {}, _import(spec["class_path"]), ALWAYS_SHOWN.get(key, ()))
    return {key: spec["class_path"].rpartition(".")[2], **{f"{key}/{k}": v for k, v in args.items()}}


def _tensorboard_value(value: Any) -> int | float | str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return value


def compared_hparams(
    module_hparams: Mapping[str, Any],
    module_class: type,
    data_hparams: Mapping[str, Any] | None = None,
    data_class: type | None = None,
    seed: int | None = None,
) -> dict[str, int | float | str]:
    """The settings two runs are compared by, flat and TensorBoard-ready: ``net``, ``optimizer``, ``lr_scheduler``
    (class names) with the arguments that differ from the class defaults (``net/p``, ``optimizer/momentum``; the
    LR always), the module's and the datamodule's own such arguments (``model/l1_lambda``, ``data/val_split``; batch
    size, augmentation and image size always) and the seed. Lists are JSON strings, booleans ``True``/``False``.

    ``module_hparams`` are the LightningModule's ``hparams_initial``: under LightningCLI the parsed config, with the
    net, optimizer and scheduler as ``{class_path, init_args}`` dicts whose ``init_args`` hold every default.
    """
    own = dict(module_hparams)
    params: dict[str, Any] = {}
    for key in ("net", "optimizer", "lr_scheduler"):
        if key in own:
            params.update(_component(key, own.pop(key)))
    params.update({f"model/{k}": v for k, v in set_arguments(own, module_class).items()})
    if data_class is not None:
        params["data"] = data_class.__name__
        shown = ALWAYS_SHOWN["data"]
        params.update({f"data/{k}": v for k, v in set_arguments(data_hparams or {}, data_class, shown).items()})
    if seed is not None:
        params["seed"] = seed
    return {name: _tensorboard_value(value) for name, value in params.items()}


def write_hparams_session(folder: Path, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
    """One TensorBoard HPARAMS session in ``folder``: its hparams, its metrics as scalars, its end.

    No experiment summary is written: given one, TensorBoard takes the columns of the first run it finds, so an SGD
    run would hide the ``optimizer/momentum`` of the others; without, it shows the union of every session's hparams.
    The session has its own folder so only these metrics (not every scalar of the run) become HPARAMS columns.
    """
    from torch.utils.tensorboard.summary import hparams, scalar
    from torch.utils.tensorboard.writer import FileWriter

    _, start, end = hparams(dict(params), dict(metrics))
    writer = FileWriter(str(folder))
    try:
        for summary in (start, *(scalar(name, value) for name, value in metrics.items()), end):
            writer.add_summary(summary, step)
    finally:
        writer.close()


class MetricsReport(Callback):
    """At the end of ``fit``, ``validate`` and ``test``: print a table of the final metrics, write them to
    ``metrics.json`` in the logger's run directory (merged per stage) and print its path. During ``fit`` it keeps a
    per-epoch ``history`` of the validation metrics with the elapsed training seconds (time-to-accuracy), kept in
    the checkpoint so a resumed run continues it. After ``fit`` the settings runs are compared by
    (:func:`compared_hparams`: classes and the arguments that differ from their defaults, batch size, augmentation,
    seed) go to TensorBoard's HPARAMS tab with the final validation metrics (``hp/...``), as a session in the run's
    ``hparams/`` folder (:func:`write_hparams_session`), so runs compare side by side. Rank zero only. The ``lit-cv`` CLI adds this callback to every run.

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
        final = {
            f"hp/{name}": value
            for name, value in collect_metrics(trainer, pl_module)["metrics"].items()
            if name.startswith("val/") and "/acc_class/" not in name
        }
        if not trainer.loggers or not final:
            return
        dm = trainer.datamodule
        seed = os.environ.get("PL_GLOBAL_SEED")  # set by seed_everything (LightningCLI's seed_everything: 13)
        params = compared_hparams(
            pl_module.hparams_initial, type(pl_module), dm.hparams_initial if dm is not None else None,
            type(dm) if dm is not None else None, int(seed) if seed is not None else None,
        )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                write_hparams_session(Path(logger.log_dir) / HPARAMS_RUN, params, final, trainer.global_step)
            else:
                logger.log_hyperparams(params, metrics=final)
