"""Write ``predict`` results as a CSV of class probabilities and predicted labels."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from callbacks.run_dir import run_dir


def prediction_rows(
    outputs: Sequence[dict[str, torch.Tensor]],
    class_names: Sequence[str],
    indices: Sequence[Sequence[int]] | None = None,
    ids: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """Flatten ``Classifier.predict_step`` outputs into one dict per sample: ``index`` (the sample's index in the
    predict dataset, from Lightning's per-batch ``indices``; else the running count), ``id`` (``ids[index]``, when
    the datamodule gives ids), ``pred``, ``pred_name``, ``label`` (when the batches have labels), ``prob_<class>``."""
    rows: list[dict[str, Any]] = []
    for b, batch in enumerate(outputs):
        probs, preds = batch["probs"].cpu(), batch["preds"].cpu()
        labels = batch.get("labels")
        batch_indices = list(indices[b]) if indices is not None and b < len(indices) else None
        if batch_indices is not None and len(batch_indices) != len(preds):
            batch_indices = None
        for i in range(len(preds)):
            index = int(batch_indices[i]) if batch_indices is not None else len(rows)
            row: dict[str, Any] = {"index": index}
            if ids is not None:
                row["id"] = ids[index] if index < len(ids) else ""
            row.update(pred=int(preds[i]), pred_name=class_names[int(preds[i])])
            if labels is not None:
                row["label"] = int(labels[i])
            row.update({f"prob_{name}": float(probs[i, c]) for c, name in enumerate(class_names)})
            rows.append(row)
    return rows


def _predict_ids(trainer: Trainer) -> list[Any] | None:
    """The datamodule's ``predict_ids()`` (the source file or row of each predict sample, in dataset order), if any;
    read through the attribute: callbacks do not import datamodules."""
    predict_ids = getattr(trainer.datamodule, "predict_ids", None)
    return list(predict_ids()) if callable(predict_ids) else None


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (index, [id], pred, pred_name, [label], prob_<class>...) to the run directory at the
    end of ``predict``. ``index`` is the sample's index in the predict dataset (what Lightning's sampler drew) and
    ``id`` ties it to its input: the datamodule's ``predict_ids()[index]``, the source file path for lit-cv's image
    datamodules, the 0-based CSV data row for bank marketing (files skipped as unreadable are in no split, so they
    shift nothing). Under multi-process strategies each rank writes ``predictions_rank<N>.csv`` for its shard, with
    the same dataset indices and ids. The ``lit-cv`` CLI adds this callback to every run.

    Args:
        filename: CSV file name in ``trainer.log_dir``.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        if not filename.endswith(".csv"):
            raise ValueError(f"PredictionWriter filename must end in .csv, got {filename!r}.")
        self.filename = filename
        self.last_path: Path | None = None

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        indices: list[list[int]] | None = None
        if predictions and isinstance(predictions[0], list):  # several predict dataloaders: no ids, running index
            predictions = [batch for loader in predictions for batch in loader]
            ids = None
        else:
            indices = batch_indices[0] if batch_indices and isinstance(batch_indices[0], list) else None
            ids = _predict_ids(trainer)
        if not predictions:
            return
        class_names = getattr(pl_module, "class_names", None) or [
            str(i) for i in range(predictions[0]["probs"].shape[1])
        ]
        rows = prediction_rows(predictions, class_names, indices, ids)
        name = self.filename
        if trainer.world_size > 1:
            name = name.replace(".csv", f"_rank{trainer.global_rank}.csv")
        path = run_dir(trainer) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["index"])
            writer.writeheader()
            writer.writerows(rows)
        self.last_path = path
        print(f"predictions written to {path}")
