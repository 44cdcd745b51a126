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


def prediction_rows(outputs: Sequence[dict[str, torch.Tensor]], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Flatten ``Classifier.predict_step`` outputs into one dict per sample (index, prediction, probabilities)."""
    rows: list[dict[str, Any]] = []
    for batch in outputs:
        probs, preds = batch["probs"].cpu(), batch["preds"].cpu()
        labels = batch.get("labels")
        for i in range(len(preds)):
            row: dict[str, Any] = {"index": len(rows), "pred": int(preds[i]), "pred_name": class_names[int(preds[i])]}
            if labels is not None:
                row["label"] = int(labels[i])
            row.update({f"prob_{name}": float(probs[i, c]) for c, name in enumerate(class_names)})
            rows.append(row)
    return rows


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (index, pred, pred_name, [label], prob_<class>...) to the run directory at the end
    of ``predict``. Under multi-process strategies each rank writes ``predictions_rank<N>.csv`` for its shard.
    The ``lit-cv`` CLI adds this callback to every run.

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
        if predictions and isinstance(predictions[0], list):  # several predict dataloaders
            predictions = [batch for loader in predictions for batch in loader]
        class_names = getattr(pl_module, "class_names", None) or [
            str(i) for i in range(predictions[0]["probs"].shape[1])
        ]
        rows = prediction_rows(predictions, class_names)
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
