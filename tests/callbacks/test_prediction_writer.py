"""PredictionWriter: every row of predictions.csv is tied to its input (dataset index and the datamodule's id)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch.utils.data import DataLoader, Sampler, TensorDataset

from callbacks import PredictionWriter
from callbacks.prediction_writer import prediction_rows

N = 10


class Backwards(Sampler[int]):
    """Draws the dataset from its last sample to its first (as a shuffle or a DDP shard would: not in order)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(range(self.n - 1, -1, -1))

    def __len__(self) -> int:
        return self.n


class Samples(LightningDataModule):
    """Sample ``i`` holds ``x = i`` and label ``i % 2``; ``predict_ids()`` names it ``file-i.png``."""

    def __init__(self, with_ids: bool = True) -> None:
        super().__init__()
        self.data = TensorDataset(torch.arange(N, dtype=torch.float32)[:, None], torch.arange(N) % 2)
        if with_ids:
            self.predict_ids = lambda: [f"file-{i}.png" for i in range(N)]

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=3, sampler=Backwards(N))


class EchoModel(LightningModule):
    """Predicts class ``x % 2`` with probability 1, and echoes ``x`` so a test can check which sample a row is."""

    class_names = ("even", "odd")

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        preds = x[:, 0].long() % 2
        return {"probs": torch.nn.functional.one_hot(preds, 2).float(), "preds": preds, "labels": y, "x": x[:, 0]}


def _predict(tmp_path: Path, tiny_trainer_kwargs: dict[str, Any], datamodule: LightningDataModule) -> list[dict]:
    writer = PredictionWriter()
    trainer = Trainer(**{**tiny_trainer_kwargs, "callbacks": [writer]})
    outputs = trainer.predict(EchoModel(), datamodule=datamodule)
    assert writer.last_path == tmp_path / "predictions.csv"
    rows = list(csv.DictReader(writer.last_path.open()))
    echoed = [int(x) for batch in outputs for x in batch["x"].tolist()]
    assert [int(r["index"]) for r in rows] == echoed  # the row's index is the sample's dataset index
    return rows


def test_each_row_names_its_input_in_any_sampling_order(tmp_path, tiny_trainer_kwargs):
    rows = _predict(tmp_path, tiny_trainer_kwargs, Samples())
    assert [r["index"] for r in rows] == [str(i) for i in range(N - 1, -1, -1)]
    assert list(rows[0]) == ["index", "id", "pred", "pred_name", "label", "prob_even", "prob_odd"]
    for row in rows:
        assert row["id"] == f"file-{row['index']}.png"
        assert int(row["label"]) == int(row["index"]) % 2  # the label column belongs to the same sample


def test_without_predict_ids_there_is_no_id_column(tmp_path, tiny_trainer_kwargs):
    rows = _predict(tmp_path, tiny_trainer_kwargs, Samples(with_ids=False))
    assert "id" not in rows[0] and len(rows) == N


@pytest.mark.parametrize("indices", [None, [[4, 2]]])
def test_prediction_rows_use_the_given_indices(indices):
    batch = {"probs": torch.tensor([[0.2, 0.8], [0.9, 0.1]]), "preds": torch.tensor([1, 0])}
    rows = prediction_rows([batch], ["a", "b"], indices, ids=[f"r{i}" for i in range(5)])
    expected = [4, 2] if indices else [0, 1]
    assert [r["index"] for r in rows] == expected and [r["id"] for r in rows] == [f"r{i}" for i in expected]
    assert rows[0]["pred_name"] == "b" and rows[0]["prob_b"] == pytest.approx(0.8)
